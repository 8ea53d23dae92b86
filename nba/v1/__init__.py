"""Generated gRPC code for the public contract in proto/nba/v1 (run `make proto`)."""
