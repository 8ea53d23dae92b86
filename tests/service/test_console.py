"""The web console (/console on the HTTP port), through a real server and, for the pages, a real
browser: Playwright driving headless Chromium (Debian's ``chromium``; ``NBA_CHROMIUM`` names
another). Without Chromium or Playwright the browser tests skip, saying why (and fail under
NBA_REQUIRE_SERVICES=1, as CI runs). The session and CSRF rules are also checked with a plain
HTTP client, which can send what a browser would not. SQLite only: the console reads and
changes the store through the same servicers the API tests run on both stores.

``NBA_CONSOLE_SCREENSHOTS=docs`` writes the README's screenshots of each page into that folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EDITOR_TOKEN, VIEWER_TOKEN, Running, customer, skip_or_fail, struct

from nba.service.auth import Tokens
from nba.service.console.sessions import Sessions
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

CHROMIUM = os.environ.get("NBA_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("NBA_CONSOLE_SCREENSHOTS")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nba.db'}"


@pytest.fixture
def server(start) -> Running:  # type: ignore[no-untyped-def]
    return start(http_port=0)  # type: ignore[no-any-return]


def base(server: Running) -> str:
    assert server.service.http is not None
    return f"http://127.0.0.1:{server.service.http.port}"


@contextmanager
def signed_in(server: Running, token: str) -> Iterator[httpx.Client]:
    """An HTTP client holding a console session (its cookie), as a browser would after signing in."""
    with httpx.Client(base_url=base(server), timeout=60) as http:
        answer = http.post("/console/sign-in", data={"token": token, "next": "/console/policies"})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/policies", answer.text
        yield http


def csrf_of(http: httpx.Client, path: str = "/console/policies/draft") -> str:
    page = http.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found
    return found.group(1)


def live_files(server: Running) -> dict[str, str]:
    live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth())
    return dict(live.files)


# Sessions and CSRF, with a plain HTTP client ---------------------------------------------------------


def test_nothing_of_the_console_is_reachable_without_a_session(server: Running) -> None:
    with httpx.Client(base_url=base(server), timeout=30) as http:
        for path in ["/console", "/console/policies", "/console/policies/draft", "/console/customers", "/console/decisions/x"]:
            answer = http.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/sign-in"), path
        for path in ["/console/api/validate", "/console/api/diff", "/console/api/preview", "/console/api/publish"]:
            answer = http.post(path, json={"files": {}})
            assert answer.status_code == 401 and answer.headers["content-type"] == "application/problem+json", path
        assert http.get("/console/api/schema").status_code == 401
        # a forged cookie is no session
        http.cookies.set("nba_console", "eyJmIjoiMDAwIn0.forged.signature", path="/console")
        assert http.get("/console/policies").status_code == 303
        # the sign-in page itself is served, and an unknown token is refused there
        assert http.get("/console/sign-in").status_code == 200
        refused = http.post("/console/sign-in", data={"token": "not-a-configured-token-000"})
        assert refused.status_code == 401 and "is not one of the service" in refused.text
        assert "set-cookie" not in refused.headers


def test_the_session_cookie_is_http_only_same_site_and_scoped_to_the_console(server: Running) -> None:
    with httpx.Client(base_url=base(server), timeout=30) as http:
        answer = http.post("/console/sign-in", data={"token": VIEWER_TOKEN, "next": "https://evil.example/"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console"  # never off to another site after signing in
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("nba_console=")
        flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= set(flags)
        assert flags["samesite"] == "SameSite=Lax" and flags["path"] == "Path=/console"
        assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
        assert VIEWER_TOKEN not in cookie  # the token itself is never in the cookie
        # signing out ends it
        token = csrf_of(http, "/console/policies")
        out = http.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert http.get("/console/policies").status_code == 303


def test_the_cookie_is_secure_under_tls() -> None:
    tokens = Tokens([f"ed:editor:{EDITOR_TOKEN}"])
    sessions = Sessions(tokens, lambda: "k" * 64, secure=True)
    _, value = sessions.sign_in(EDITOR_TOKEN)
    assert "; Secure" in sessions.cookie_header(value)


def test_a_session_ends_when_its_token_is_no_longer_configured() -> None:
    key = "k" * 64
    before = Sessions(Tokens([f"ed:editor:{EDITOR_TOKEN}", f"vi:viewer:{VIEWER_TOKEN}"]), lambda: key)
    caller, value = before.sign_in(EDITOR_TOKEN)
    assert caller.role == "editor"
    session = before.read(value)
    assert session is not None and session.caller.name == "ed"
    # the same cookie, read by a service whose editor token was removed (or rotated)
    after = Sessions(Tokens([f"vi:viewer:{VIEWER_TOKEN}"]), lambda: key)
    assert after.read(value) is None
    # and a cookie signed with another key is nobody's
    assert Sessions(Tokens([f"ed:editor:{EDITOR_TOKEN}"]), lambda: "x" * 64).read(value) is None


def test_a_change_without_the_csrf_token_or_from_another_site_is_refused(server: Running) -> None:
    files = live_files(server)
    before = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=server.auth())
    with signed_in(server, EDITOR_TOKEN) as http:
        token = csrf_of(http)
        body = {"files": {**files, "channels.yaml": files["channels.yaml"] + "\n# changed\n"}, "comment": "csrf test"}
        for headers in ({}, {"x-csrf-token": "wrong"}, {"x-csrf-token": token, "origin": "https://evil.example"}):
            answer = http.post("/console/api/publish", json=body, headers=headers)
            assert answer.status_code == 403, answer.text
            assert answer.json()["detail"].startswith(("csrf:", "origin:"))
        # the rollback form, likewise
        answer = http.post("/console/policies/rollback", data={"version": "1", "comment": "x"})
        assert answer.status_code == 403 and "csrf" in answer.text
        after = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=server.auth())
        assert len(after.activations) == len(before.activations)  # nothing changed
        # with the token, from the console's own page, the same publish goes through
        answer = http.post("/console/api/publish", json=body, headers={"x-csrf-token": token})
        assert answer.status_code == 200, answer.text
        assert answer.json()["live"]["version"] == "2"


def test_a_viewer_cannot_publish_or_roll_back(server: Running) -> None:
    files = live_files(server)
    with signed_in(server, VIEWER_TOKEN) as http:
        token = csrf_of(http)
        changed = {**files, "channels.yaml": files["channels.yaml"] + "\n# changed\n"}
        answer = http.post("/console/api/publish", json={"files": changed, "comment": "x"}, headers={"x-csrf-token": token})
        assert answer.status_code == 403 and "PublishPolicySet needs an editor" in answer.json()["detail"]
        answer = http.post("/console/policies/rollback", data={"csrf": token, "version": "1", "comment": "x"})
        assert answer.status_code == 403 and "RollbackPolicySet needs an editor" in answer.text
        # but may validate, diff and preview
        answer = http.post("/console/api/validate", json={"files": changed}, headers={"x-csrf-token": token})
        assert answer.status_code == 200 and answer.json()["valid"] is True


def test_validation_answers_problems_at_their_lines(server: Running) -> None:
    files = live_files(server)
    text = files["cross_sell.yaml"]
    line = text.splitlines().index("    value: 120.0") + 1
    with signed_in(server, VIEWER_TOKEN) as http:
        token = csrf_of(http)
        broken = {**files, "cross_sell.yaml": text.replace("    value: 120.0", "    value: lots", 1)}
        answer = http.post("/console/api/validate", json={"files": broken}, headers={"x-csrf-token": token}).json()
        assert answer["valid"] is False
        assert [(p["file"], p["line"]) for p in answer["problems"] if p["severity"] == "error"] == [("cross_sell.yaml", line)]
        # a refused publish's problem details carry the line too (the HTTP API's and the console's)
    with signed_in(server, EDITOR_TOKEN) as http:
        token = csrf_of(http)
        refused = http.post("/console/api/publish", json={"files": broken, "comment": "broken"}, headers={"x-csrf-token": token})
        assert refused.status_code == 400
        assert [(p["file"], p["line"]) for p in refused.json()["problems"]] == [("cross_sell.yaml", line)]


def test_signing_out_ends_the_session_a_copied_cookie_too(server: Running) -> None:
    with signed_in(server, EDITOR_TOKEN) as http, signed_in(server, EDITOR_TOKEN) as elsewhere:
        copied = httpx.Client(base_url=base(server), timeout=30, cookies=dict(http.cookies))
        assert copied.get("/console/policies").status_code == 200
        assert elsewhere.get("/console/policies").status_code == 200
        out = http.post("/console/sign-out", data={"csrf": csrf_of(http, "/console/policies")})
        assert out.status_code == 303
        # signing out ends every session of the token: the copy, and the other browser's
        assert copied.get("/console/policies").status_code == 303
        assert elsewhere.get("/console/policies").status_code == 303
        copied.close()
    with signed_in(server, EDITOR_TOKEN) as again:  # and a new sign-in works
        assert again.get("/console/policies").status_code == 200


def test_sign_in_from_another_site_is_refused(server: Running) -> None:
    with httpx.Client(base_url=base(server), timeout=30) as http:
        answer = http.post("/console/sign-in", data={"token": EDITOR_TOKEN}, headers={"origin": "https://evil.example"})
        assert answer.status_code == 400 and "set-cookie" not in answer.headers
        # the console's own origin, written in another case, is its own
        host = base(server).removeprefix("http://")
        answer = http.post("/console/sign-in", data={"token": EDITOR_TOKEN}, headers={"origin": f"HTTP://{host.upper()}"})
        assert answer.status_code == 303


def test_odd_input_gets_a_client_status_never_a_server_error(server: Running) -> None:
    profiles = ppb_grpc.ProfileServiceStub(server.channel)
    profiles.Track(ppb.TrackRequest(event_id="e-1", customer_id="a/b", type="page_view", properties=struct({"page": "x"})))
    with signed_in(server, EDITOR_TOKEN) as http:
        token = csrf_of(http)
        csrf = {"x-csrf-token": token}
        files = live_files(server)
        assert http.get("/console/customers/a%2Fb").status_code == 200  # an id with a slash opens
        cases = [
            http.get("/console", params={"period": "custom", "from": "2026-01-01", "to": "9999-12-31"}),
            http.get("/console", params={"period": "custom", "from": "yesterday", "to": "2026-01-01"}),
            http.get("/console", params={"period": "forever"}),
            http.get("/console/decisions/a%00b"),
            http.get("/console/customers/" + "x" * 300),
            http.get("/console/evaluations/99999999999999999999"),
            http.post("/console/policies/rollback", data={"csrf": token, "version": str(2**63), "comment": "x"}),
            http.post("/console/policies/rollback", data={"csrf": token, "version": "one", "comment": "x"}),
            http.post("/console/policies/rollback", data={"csrf": token, "version": "1", "comment": " "}),
            http.post("/console/api/preview", json={"files": files, "last_n": 2**40}, headers=csrf),
            http.post(
                "/console/api/publish", json={"files": files, "comment": "x", "expected_live_version": 2**63}, headers=csrf
            ),
            http.post(
                "/console/api/publish", json={"files": {f"f{n}.yaml": "" for n in range(300)}, "comment": "x"}, headers=csrf
            ),
            http.post("/console/api/diff", json={"files": "nope"}, headers=csrf),
            http.post("/console/api/validate", content=b"{not json", headers={**csrf, "content-type": "application/json"}),
            http.post("/console/api/evaluations", json={"targets": ["version:99999999999999999999"]}, headers=csrf),
            http.post("/console/api/evaluations", json={"targets": ["learner:features=40000"]}, headers=csrf),
            http.post("/console/api/evaluations", json={"targets": ["learner:nonsense=1"]}, headers=csrf),
            http.post("/console/api/evaluations", json={"targets": ["file:/etc/passwd"]}, headers=csrf),
            http.post("/console/api/evaluations", json={"targets": ["draft"]}, headers=csrf),
            http.post("/console/api/evaluations", json={"targets": ["logged"], "since": "2026-13-01"}, headers=csrf),
        ]
        for answer in cases:
            assert 400 <= answer.status_code < 500, (answer.request.url, answer.status_code, answer.text[:300])
        assert "features must be 1 to 1024" in cases[15].json()["detail"]
        assert "unknown setting 'nonsense'" in cases[16].json()["detail"]
        assert "comment: say why" in cases[8].text
        # a form too large is refused before it is read whole
        big = http.post("/console/policies/rollback", data={"csrf": token, "comment": "x" * 100_000})
        assert big.status_code == 400 and "more than 65,536 bytes" in big.text


def test_a_stale_rollback_is_refused_with_the_version_now_live(server: Running) -> None:
    files = live_files(server)
    server.admin.PublishPolicySet(
        apb.PublishPolicySetRequest(
            draft=apb.PolicySetDraft(files={**files, "channels.yaml": files["channels.yaml"] + "\n# two\n"}), comment="two"
        ),
        metadata=server.auth(),
    )
    with signed_in(server, EDITOR_TOKEN) as http:
        token = csrf_of(http, "/console/policies")
        # the page said version 1 was live; version 2 is
        answer = http.post(
            "/console/policies/rollback", data={"csrf": token, "version": "1", "expected_live_version": "1", "comment": "x"}
        )
        assert answer.status_code == 412 and "version 2 is live" in answer.text.replace("&#39;", "'")


def test_one_evaluation_runs_at_a_time(server: Running) -> None:
    from test_overview import traffic

    traffic(server, 10)
    with signed_in(server, VIEWER_TOKEN) as http:
        csrf = {"x-csrf-token": csrf_of(http)}
        first = http.post("/console/api/evaluations", json={"targets": ["logged", "uniform"]}, headers=csrf)
        assert first.status_code == 200, first.text
        second = http.post("/console/api/evaluations", json={"targets": ["logged"]}, headers=csrf)
        assert second.status_code == 412 and f"evaluation {first.json()['id']} is still running" in second.json()["detail"]
        deadline = time.monotonic() + 120
        while http.get(f"/console/api/evaluations/{first.json()['id']}").json()["status"] in ("waiting", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert http.post("/console/api/evaluations", json={"targets": ["logged"]}, headers=csrf).status_code == 200


# In a browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set NBA_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # what a browser says is wrong (a blocked script or style, a resource not found, a bad
    # chart setting) fails the test too
    # (a call the service refuses and the page shows, 400 or 412, is the page working)
    shown = re.compile(r"status of (400|401|403|412) ")
    opened.on(
        "console",
        lambda message: (
            errors.append(message.text) if message.type in ("error", "warning") and not shown.search(message.text) else None
        ),
    )
    yield opened
    context.close()
    assert errors == []  # no script on any page failed


def sign_in(page: Any, server: Running, token: str, path: str = "/console/policies") -> None:
    page.goto(base(server) + path)
    assert "/console/sign-in" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


def test_an_editor_edits_a_draft_sees_its_error_at_its_line_previews_publishes_and_rolls_back(server: Running, page: Any) -> None:
    for n in range(30):  # a few logged decisions for the preview to replay
        server.stub.Decide(pb.DecideRequest(customer_id=f"c-{n}", channel="web", context=struct({"customer": customer()})))
    server.service.log.flush(10)
    sign_in(page, server, EDITOR_TOKEN)
    assert page.inner_text("#live-version").startswith("1-")
    shot(page, "policies")
    page.click("text=Edit a draft")
    page.wait_for_selector("#status.ok", timeout=30_000)
    page.click('button.tab[data-file="cross_sell.yaml"]')
    area = page.locator('textarea[data-file="cross_sell.yaml"]')
    text = area.input_value()
    line = text.splitlines().index("    value: 120.0") + 1
    area.fill(text.replace("    value: 120.0", "    value: lots", 1))
    # as typed: the error marks its line in the gutter and the list names it
    marked = page.wait_for_selector('.editor[data-file="cross_sell.yaml"] .gutter .line.error', timeout=30_000)
    assert marked.get_attribute("data-line") == str(line)
    # a marked line keeps the height of every line: the marks stay level with the text
    heights = {
        page.locator(f'.editor[data-file="cross_sell.yaml"] {part} .line').nth(n).bounding_box()["height"]
        for part in (".gutter", ".backdrop")
        for n in (line - 2, line - 1)
    }
    assert len(heights) == 1, heights
    assert page.inner_text("#status") == "1 error"
    assert f"cross_sell.yaml, line {line}" in page.inner_text("#problems")
    assert "field 'value'" in page.inner_text("#problems")
    # the problem's entry jumps to its line: the line is selected in the editor
    page.click("#problems li.problem")
    selected = area.evaluate("(a) => a.value.slice(0, a.selectionStart).split('\\n').length")
    assert selected == line
    shot(page, "draft-error")
    # completion offers the fields an offer may have where the cursor is
    fixed = text.replace("    value: 120.0", "    value: 125.0", 1).replace(
        "    tags: [credit-card]\n", "    tags: [credit-card]\n    lev\n", 1
    )
    area.fill(fixed)
    caret = fixed.index("    lev\n") + len("    lev")
    area.evaluate(f"(a) => {{ a.focus(); a.setSelectionRange({caret}, {caret}); }}")
    page.keyboard.press("Control+Space")
    page.wait_for_selector("#completion:not([hidden]) li")
    assert page.locator("#completion li").all_inner_texts()[0].startswith("lever")
    page.keyboard.press("Enter")
    page.keyboard.type("1.2")
    page.wait_for_selector("#status.ok", timeout=30_000)
    assert page.locator(".gutter .line.error").count() == 0
    assert "    lever: 1.2\n" in area.input_value()
    # the diff against live, and the what-if preview with its value estimates
    page.click("#show-diff")
    page.wait_for_selector("#diff pre.diff")
    assert "+    value: 125.0" in page.inner_text("#diff") and "-    value: 120.0" in page.inner_text("#diff")
    page.click("#run-preview")
    page.wait_for_selector("#preview-totals", timeout=120_000)
    assert "30 logged decisions replayed" in page.inner_text("#preview")
    assert page.locator("#preview-offers tbody tr").count() > 5
    shot(page, "draft-preview")
    # publish with a comment
    page.fill("#comment", "gold card is worth more")
    page.click("#publish-button")
    page.wait_for_selector("#publish-result.notice", timeout=60_000)
    assert "version 2-" in page.inner_text("#publish-result")
    live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth())
    assert live.version == 2 and "    lever: 1.2\n" in live.files["cross_sell.yaml"]
    # history, and a rollback to version 1
    page.goto(base(server) + "/console/policies")
    assert page.locator("#versions tr.live").get_attribute("data-version") == "2"
    assert "gold card is worth more" in page.inner_text("#activations")
    row = page.locator('#versions tr[data-version="1"]')
    row.locator("input[name=comment]").fill("back to the first")
    row.locator("button").click()
    page.wait_for_selector("p.notice")
    assert "Version 1 is live again" in page.inner_text("p.notice")
    assert page.locator("#versions tr.live").get_attribute("data-version") == "1"
    activations = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=server.auth()).activations
    assert (activations[0].version, activations[0].source, activations[0].actor, activations[0].comment) == (
        1,
        "rollback",
        "ed",
        "back to the first",
    )
    shot(page, "history")


def test_the_overviews_figures_equal_the_apis_and_the_logs(server: Running, page: Any) -> None:
    from test_overview import from_the_log, traffic

    traffic(server, 40)
    sign_in(page, server, VIEWER_TOKEN, "/console")
    page.wait_for_selector("body[data-charts=drawn]", timeout=30_000)
    shot(page, "overview")
    api = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=server.auth(VIEWER_TOKEN)).totals
    log = from_the_log(server)
    shown = {name: page.get_attribute(f"#kpi-{name}", "data-value") for name in ("decisions", "impressions", "acceptances")}
    assert shown == {"decisions": "40", "impressions": str(api.impressions), "acceptances": str(api.acceptances)}
    assert (api.decisions, api.impressions, api.acceptances) == (log["decisions"], log["impressions"], log["acceptances"])
    assert float(page.get_attribute("#kpi-acceptance-rate", "data-value")) == pytest.approx(api.acceptance_rate)
    assert float(page.get_attribute("#kpi-value", "data-value")) == pytest.approx(api.value)
    # one channel, chosen in the form
    page.select_option("#channel", "web")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("body[data-charts=drawn]", timeout=30_000)
    assert "channel=web" in page.url
    assert page.get_attribute("#kpi-decisions", "data-value") == str(from_the_log(server, "web")["decisions"])
    assert page.locator("#by-channel tbody tr").count() == 1
    # the charts are drawn by plotly.js, served from the plotly wheel
    assert page.locator("#chart-series .main-svg").count() >= 1


def test_two_editors_cannot_overwrite_each_other(server: Running, page: Any) -> None:
    sign_in(page, server, EDITOR_TOKEN, "/console/policies/draft")
    page.wait_for_selector("#status.ok", timeout=30_000)
    # meanwhile another editor publishes over the API
    files = live_files(server)
    server.admin.PublishPolicySet(
        apb.PublishPolicySetRequest(
            draft=apb.PolicySetDraft(files={**files, "channels.yaml": files["channels.yaml"] + "\n# theirs\n"}),
            comment="the other editor",
        ),
        metadata=server.auth(),
    )
    area = page.locator('textarea[data-file="channels.yaml"]')
    area.fill(area.input_value() + "\n# mine\n")
    page.fill("#comment", "mine")
    page.click("#publish-button")
    page.wait_for_selector("#publish-result.error", timeout=60_000)
    assert "Not published: version 2 was made live" in page.inner_text("#publish-result")
    live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth())
    assert live.version == 2 and "# theirs" in live.files["channels.yaml"]  # theirs stands


def test_a_viewer_sees_no_publishing_and_is_refused_if_they_try(server: Running, page: Any) -> None:
    sign_in(page, server, VIEWER_TOKEN, "/console/policies/draft")
    page.wait_for_selector("#status.ok", timeout=30_000)
    assert page.locator("#publish-button").count() == 0
    assert "publishing needs an editor token" in page.inner_text("#viewer-note")
    page.goto(base(server) + "/console/policies")
    assert page.locator("form.rollback").count() == 0
    # the page's own session and CSRF token, sent by hand: still refused, by role
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    answer = page.request.post(
        base(server) + "/console/api/publish",
        data={"files": live_files(server), "comment": "viewer"},
        headers={"x-csrf-token": token},
    )
    assert answer.status == 403 and "needs an editor" in answer.json()["detail"]
    # and without the CSRF token, refused before anything else
    answer = page.request.post(base(server) + "/console/api/validate", data={"files": live_files(server)})
    assert answer.status == 403 and answer.json()["detail"].startswith("csrf:")


def test_a_customers_360_view_and_a_decisions_explanation(server: Running, page: Any) -> None:
    profiles = ppb_grpc.ProfileServiceStub(server.channel)
    profiles.Track(
        ppb.TrackRequest(
            event_id="e-1",
            customer_id="ann",
            identities={"email": "Ann@Example.com"},
            type="signup",
            source="web",
            properties=struct({"email": "ann@example.com", "tier": "gold"}),
        )
    )
    profiles.Track(
        ppb.TrackRequest(
            event_id="e-2",
            customer_id="ann",
            type="order",
            source="app",
            properties=struct({"amount": 120, "status": "open", "order_id": "o-1"}),
        )
    )
    decided = server.stub.Decide(
        pb.DecideRequest(customer_id="ann", channel="web", limit=2, context=struct({"customer": customer(id="ann")}))
    )
    offer = decided.offers[0].offer_id
    server.stub.Feedback(
        pb.FeedbackRequest(event_id="f-1", decision_id=decided.decision_id, offer_id=offer, outcome=pb.OUTCOME_ACCEPTED)
    )
    server.service.log.flush(10)
    sign_in(page, server, VIEWER_TOKEN, "/console/customers")
    # found by an identifier, written differently from how it was tracked
    page.fill("#q", "email:ann@EXAMPLE.com")
    page.press("#q", "Enter")
    page.wait_for_selector("#customer-id")
    assert page.inner_text("#customer-id") == "ann"
    assert "tier" in page.inner_text("#attributes") and "gold" in page.inner_text("#attributes")
    assert "open_orders" in page.inner_text("#attributes")
    assert "orders_in_progress" in page.inner_text("#activity")
    assert "ann@example.com" not in page.content()  # personal data masked for a viewer (pii_role: editor)
    timeline = page.inner_text("#timeline")
    assert "signup" in timeline and "order" in timeline and decided.decision_id in timeline
    assert f"{offer} accepted" in timeline
    assert page.locator("#next-best-actions tbody tr").count() >= 1
    shot(page, "customer")
    page.click(f'a.decision-link:has-text("{decided.decision_id}")')
    page.wait_for_selector("#explanation")
    chosen = page.locator(f'#explanation tr[data-offer="{offer}"]')
    assert chosen.locator("td").nth(1).inner_text().startswith("chosen")
    filtered = page.locator("#explanation tr.filtered")
    assert filtered.count() >= 1 and filtered.first.locator("td").nth(2).inner_text() != ""
    assert "shown to the editor role" in page.content()  # the context, personal, is not shown to a viewer
    shot(page, "decision")
    # an editor sees the personal data
    editor = page.context.browser.new_context()
    other = editor.new_page()
    sign_in(other, server, EDITOR_TOKEN, "/console/customers/ann")
    assert "ann@example.com" in other.content()
    editor.close()


def test_segment_sizes_and_score_quality(server: Running, page: Any) -> None:
    files = live_files(server)
    files["profile.yaml"] = files["profile.yaml"].replace(
        "  segments:", "  scores:\n    complains_soon: predicts complaint within 30d\n  segments:", 1
    )
    server.admin.PublishPolicySet(
        apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files), comment="a score"), metadata=server.auth()
    )
    profiles = ppb_grpc.ProfileServiceStub(server.channel)
    for n, amount in enumerate([1500, 40, 2200]):
        profiles.Track(
            ppb.TrackRequest(
                event_id=f"o-{n}",
                customer_id=f"big-{n}",
                type="order",
                source="web",
                properties=struct({"amount": amount, "status": "delivered", "order_id": f"o-{n}"}),
            )
        )
    sign_in(page, server, VIEWER_TOKEN, "/console/segments")
    page.wait_for_selector("body[data-charts=drawn]", timeout=30_000)
    row = page.locator('#segments tr[data-segment="big_spenders"]')
    assert row.locator("td").nth(3).inner_text() == "2"  # the two orders of 1,000 or more
    assert row.locator("td").nth(4).inner_text() == "2"
    assert page.locator('#segments tr[data-segment="frustrated"] td').nth(3).inner_text() == "0"
    score = page.locator('#scores tr[data-score="complains_soon"]')
    assert "predicts complaint within 30d" in score.inner_text()
    assert "flagged: too few labels" in score.inner_text()
    shot(page, "segments")


def test_an_offline_evaluation_runs_in_the_background_and_its_report_is_kept(server: Running, page: Any) -> None:
    from test_overview import traffic

    from nba.evaluation import evaluate, from_store, parse_target
    from nba.evaluation.reward_model import RewardModel
    from nba.service.evaluations import BOOTSTRAP

    traffic(server, 40)
    sign_in(page, server, VIEWER_TOKEN, "/console/evaluations")
    # nothing picked: refused, saying what to fix
    for box in page.locator("input[name=targets]").all():
        box.uncheck()
    page.click("#run-evaluation")
    assert "targets: pick one or more policies" in page.inner_text("p.error")
    for box in page.locator("input[name=targets]").all():
        box.uncheck()
    page.check("input[name=targets][value=logged]")
    page.check("input[name=targets][value=uniform]")
    page.click("#run-evaluation")
    page.wait_for_url("**/console/evaluations/*")
    page.wait_for_selector("#estimates", timeout=180_000)  # the page follows the progress, then shows the report
    page.wait_for_selector("body[data-charts=drawn]", timeout=30_000)
    shown = {
        (row.get_attribute("data-policy"), row.get_attribute("data-estimator")): float(row.locator("td").nth(2).inner_text())
        for row in page.locator("#estimates tbody tr").all()
    }
    assert {p for p, _ in shown} == {"logged", "uniform"} and {"ips", "snips", "dm", "dr"} <= {e for _, e in shown}
    # the same estimates as nba.evaluation gives on the same log, with the same seed
    decisions = from_store(server.service.store, include_open=True)
    expected = evaluate(
        decisions,
        [parse_target("logged"), parse_target("uniform")],
        n_bootstrap=BOOTSTRAP,
        seed=0,
        reward_model=RewardModel(decisions),
    )
    assert shown == {(e.policy, e.estimator): pytest.approx(e.value, abs=5e-5) for e in expected}
    assert "40 decisions" in page.inner_text("#evaluation")
    shot(page, "evaluation")
    # kept: listed, done, by whom
    page.goto(base(server) + "/console/evaluations")
    row = page.locator("#evaluations tbody tr").first
    assert "done" in row.inner_text() and "vi" in row.inner_text() and "logged, uniform" in row.inner_text()


def test_a_draft_is_evaluated_offline_from_the_editor(server: Running, page: Any) -> None:
    from test_overview import traffic

    traffic(server, 30)
    sign_in(page, server, VIEWER_TOKEN, "/console/policies/draft")
    page.wait_for_selector("#status.ok", timeout=30_000)
    area = page.locator('textarea[data-file="cross_sell.yaml"]')
    page.click('button.tab[data-file="cross_sell.yaml"]')
    area.fill(area.input_value().replace("    value: 120.0", "    value: lots", 1))
    page.wait_for_selector("#status.bad", timeout=30_000)
    page.click("#evaluate-draft")  # an invalid draft is refused, its problem at its line
    page.wait_for_selector("#publish-result.error")
    assert "invalid policy set" in page.inner_text("#publish-result")
    area.fill(area.input_value().replace("    value: lots", "    value: 500.0", 1))
    page.wait_for_selector("#status.ok", timeout=30_000)
    page.click("#evaluate-draft")
    with page.context.expect_page() as opened:
        page.click("#evaluation-link")  # the report opens beside the draft, which stays as it is
    report = opened.value
    assert "    value: 500.0" in area.input_value()
    report.wait_for_selector("#estimates", timeout=180_000)
    policies = {row.get_attribute("data-policy") for row in report.locator("#estimates tbody tr").all()}
    assert policies == {"logged", "live (version 1)", "draft"}
