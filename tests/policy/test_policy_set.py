"""Loading and validating a policy set: every problem named by file, offer or policy, and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import POLICIES

from nba.errors import PolicySetError
from nba.evaluation.examples import check_examples, load_examples
from nba.policy.loading import load_policy_set as load_catalogue

HEADER = "channels: [web, app, email, call_center]\n"


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def test_the_minimal_shape_from_the_contract_loads_as_it_is(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "offers.yaml": """
                channels: [web, app, email, call_center]
                offers:
                  - id: gold-card
                    name: Gold credit card
                    channels: [web, app]
                    value: 120.0                 # business value of an acceptance
                    eligibility: customer.age >= 18 && !customer.flags.fraud_risk   # CEL over the request
                    valid_from: 2026-01-01T00:00:00Z   # optional, as is valid_until
                    treatment: {web: banner-gold, app: card-gold}
            """
        },
    )
    catalogue = load_catalogue(tmp_path)
    offer = catalogue.offers["gold-card"].offer
    assert catalogue.channels == ("web", "app", "email", "call_center")
    assert offer.value == 120.0 and offer.valid_from.year == 2026
    assert offer.treatment_for("app") == "card-gold"
    assert [o.id for o in catalogue.by_channel["web"]] == ["gold-card"]


def test_the_sample_catalogue_loads_and_covers_every_channel_and_group() -> None:
    catalogue = load_catalogue(POLICIES)
    assert 18 <= len(catalogue.offers) <= 30
    assert {o.offer.group for o in catalogue.offers.values()} == {"retention", "cross-sell", "up-sell", "service"}
    assert set(catalogue.fallback) == set(catalogue.channels) == {"web", "app", "email", "call_center"}
    assert all(len(catalogue.by_channel[c]) >= 5 for c in catalogue.channels)


def test_the_sample_catalogue_examples_hold() -> None:
    examples = load_examples(POLICIES)
    assert len(examples) >= 10
    assert check_examples(load_catalogue(POLICIES), examples) == []


def test_a_broken_example_is_reported() -> None:
    catalogue = load_catalogue(POLICIES)
    (source, example), *_ = load_examples(POLICIES)
    broken = example.model_copy(update={"eligible": ["security-check"], "not_eligible": ["nonexistent"]})
    failures = check_examples(catalogue, [(source, broken)])
    assert any("expected 'security-check' eligible" in f for f in failures)
    assert any("unknown offer 'nonexistent'" in f for f in failures)


def test_the_version_is_a_content_hash(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": HEADER + "offers: [{id: x, name: X, channels: [web]}]\n"})
    first = load_catalogue(tmp_path).content_hash
    assert load_catalogue(tmp_path).content_hash == first
    write(tmp_path, {"a.yaml": HEADER + "offers: [{id: x, name: X2, channels: [web]}]\n"})
    assert load_catalogue(tmp_path).content_hash != first


def test_example_files_are_not_offers(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": HEADER + "offers: [{id: x, name: X, channels: [web]}]\n", "a_test.yaml": "examples: []\n"})
    assert list(load_catalogue(tmp_path).offers) == ["x"]


OFFER = "offers:\n  - {id: gold-card, name: Gold, channels: [web], %s}\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": HEADER + OFFER % "eligibility: 'customer.age >= && 1'"},
            "a.yaml: offer 'gold-card': field 'eligibility': line 1, column 17: syntax error",
        ),
        (
            {"a.yaml": HEADER + OFFER % "eligibility: 'custmer.age > 3'"},
            "a.yaml: offer 'gold-card': field 'eligibility': line 1, column 1: unknown variable 'custmer'",
        ),
        ({"a.yaml": HEADER + OFFER % "eligibilty: 'true'"}, "a.yaml: offer 'gold-card': field 'eligibilty': unknown field"),
        (
            {"a.yaml": HEADER + OFFER % "value: -3"},
            "a.yaml: offer 'gold-card': field 'value': Input should be greater than or equal to 0",
        ),
        ({"a.yaml": HEADER + OFFER % "value: .nan"}, "field 'value'"),
        (
            {"a.yaml": HEADER + "offers:\n  - {id: gold-card, name: Gold, channels: [fax]}\n"},
            "a.yaml: offer 'gold-card': field 'channels': fax not declared",
        ),
        (
            {"a.yaml": HEADER + OFFER % "treatment: {app: x}"},
            "offer 'gold-card': treatment names channels the offer is not on: app",
        ),
        (
            {"a.yaml": HEADER + OFFER % "valid_from: 2027-01-01, valid_until: 2026-01-01"},
            "offer 'gold-card': valid_from (2027-01-01T00:00:00+00:00) must be before valid_until",
        ),
        ({"a.yaml": HEADER + "offers:\n  - {name: Nameless, channels: [web]}\n"}, "a.yaml: field 'offers[0].id': Field required"),
        (
            {"a.yaml": HEADER + OFFER % "value: 1", "b.yaml": OFFER % "value: 2"},
            "b.yaml: offer 'gold-card': id already used in a.yaml",
        ),
        (
            {
                "a.yaml": HEADER + "offers:\n  - {id: f1, name: F, channels: [web], fallback: true}\n"
                "  - {id: f2, name: F, channels: [web, app], fallback: true}\n"
            },
            "a.yaml: offer 'f2': field 'fallback': channel 'web' already has fallback 'f1'",
        ),
        ({"a.yaml": "offers: [{id: x, name: X, channels: [web]}]\n"}, "no file declares `channels:`"),
        ({"a.yaml": HEADER + "offers: [\n"}, "a.yaml: not valid YAML at line"),
        ({"a.yaml": "- just\n- a list\n"}, "a.yaml: expected a mapping"),
        ({"a.yaml": HEADER + "offerz: []\n"}, "a.yaml: field 'offerz': unknown field"),
        ({"notes.txt": "nothing"}, "no *.yaml policy files"),
    ],
)
def test_invalid_catalogues_are_refused_naming_file_offer_and_field(tmp_path: Path, files, expected: str) -> None:
    write(tmp_path, files)
    with pytest.raises(PolicySetError) as raised:
        load_catalogue(tmp_path)
    assert any(expected in str(problem) for problem in raised.value.problems), raised.value.messages


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.yaml": HEADER
            + "offers:\n  - {id: x, name: X, channels: [fax]}\n  - {id: y, name: Y, channels: [web], eligibility: '1 +'}\n",
            "b.yaml": "offers:\n  - {id: z, channels: [web]}\n",
        },
    )
    with pytest.raises(PolicySetError) as raised:
        load_catalogue(tmp_path)
    assert len(raised.value.messages) == 3
    assert "3 problems" in str(raised.value)


def test_a_missing_folder_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError, match="NBA_POLICIES"):
        load_catalogue(tmp_path / "nowhere")


def test_the_published_json_schema_is_current_and_accepts_the_sample_files() -> None:
    import json

    import jsonschema
    import yaml

    from nba.policy.policy_set import json_schema

    published = json.loads((POLICIES / "policy-set.schema.json").read_text())
    assert published == json_schema(), "run: .venv/bin/nba policies schema > policies/policy-set.schema.json"
    validator = jsonschema.Draft202012Validator(published)
    for path in POLICIES.glob("*.yaml"):
        if not path.name.endswith("_test.yaml"):
            # As an editor sees it: timestamps are text, not the datetimes PyYAML makes of them.
            document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=lambda v: v.isoformat()))
            errors = [e.message for e in validator.iter_errors(document)]
            assert errors == [], (path.name, errors)
    bad = {"offers": [{"id": "x", "name": "X", "channels": ["web"], "eligibilty": "true"}]}
    assert list(validator.iter_errors(bad))  # the misspelt key is caught by editors too
