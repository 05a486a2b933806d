"""The signature schemes against the Standard Webhooks vector, the reference library,
and receiver code written the way providers document it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhookd.signing import (
    REDACTED,
    SCHEMES,
    SignatureSpec,
    decode_standard_secret,
    generate_secret,
    redact,
    sign,
    standard_signature,
    verify_standard,
)

# The published Standard Webhooks test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

PLAIN_SECRET = "s3cr3t-for-hmac-receivers-\u00e9"  # non-ASCII on purpose: UTF-8 key bytes
BODY = b'{"id":"evt_1","type":"call.completed","data":{"n":1,"text":"caf\xc3\xa9"}}'
MSG_ID = "evt_01HZZZZZZZZZZZZZZZZZZZZZZZ"


def now_s() -> int:
    return int(time.time())


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


# --- standard --------------------------------------------------------------------------


def test_standard_signature_matches_the_published_vector() -> None:
    assert standard_signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_sign_standard_reproduces_the_vector_headers() -> None:
    headers = sign(SignatureSpec("standard"), [VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIG,
    }


def test_standard_headers_verify_with_the_reference_library() -> None:
    secret = generate_secret()
    headers = sign(SignatureSpec("standard"), [secret], MSG_ID, now_s(), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_standard_headers_fail_the_reference_library_with_another_secret() -> None:
    headers = sign(SignatureSpec("standard"), [generate_secret()], MSG_ID, now_s(), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_standard_rotation_carries_one_signature_per_secret() -> None:
    new, old = generate_secret(), generate_secret()
    ts = now_s()
    headers = sign(SignatureSpec("standard"), [new, old], MSG_ID, ts, BODY)
    sigs = headers["webhook-signature"].split(" ")
    assert len(sigs) == 2
    assert all(s.startswith("v1,") for s in sigs)
    assert sigs == [
        standard_signature(new, MSG_ID, ts, BODY),
        standard_signature(old, MSG_ID, ts, BODY),
    ]
    # A receiver holding either secret alone verifies the request.
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    assert verify_standard(new, headers, BODY, now_s=ts)
    assert verify_standard(old, headers, BODY, now_s=ts)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_standard_signature_covers_the_exact_body_bytes() -> None:
    secret = generate_secret()
    headers = sign(SignatureSpec("standard"), [secret], MSG_ID, now_s(), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)


def test_standard_ignores_header_and_timestamp_header_options() -> None:
    spec = SignatureSpec("standard", header="X-Sig", timestamp_header="X-Ts")
    headers = sign(spec, [VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}


# --- hmac-sha256 -----------------------------------------------------------------------


def provider_doc_verify(secret: str, body: bytes, received: str) -> bool:
    """What a receiver copies from a provider's docs."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received)


def test_hmac_sha256_default_header_verifies_like_provider_docs() -> None:
    headers = sign(SignatureSpec("hmac-sha256"), [PLAIN_SECRET], MSG_ID, 1700000000, BODY)
    assert list(headers) == ["X-Webhook-Signature"]
    sig = headers["X-Webhook-Signature"]
    assert len(sig) == 64
    assert sig == sig.lower()
    int(sig, 16)
    assert provider_doc_verify(PLAIN_SECRET, BODY, sig)
    assert not provider_doc_verify(PLAIN_SECRET, BODY + b"x", sig)
    assert not provider_doc_verify("another-secret-entirely", BODY, sig)


def test_hmac_sha256_custom_header_is_honoured() -> None:
    spec = SignatureSpec("hmac-sha256", header="X-Hub-Signature-256")
    headers = sign(spec, [PLAIN_SECRET], MSG_ID, 1700000000, BODY)
    assert list(headers) == ["X-Hub-Signature-256"]
    assert provider_doc_verify(PLAIN_SECRET, BODY, headers["X-Hub-Signature-256"])


def test_hmac_sha256_signs_with_the_current_secret_only() -> None:
    old = "the-old-secret-still-in-grace"
    headers = sign(SignatureSpec("hmac-sha256"), [PLAIN_SECRET, old], MSG_ID, 1, BODY)
    assert provider_doc_verify(PLAIN_SECRET, BODY, headers["X-Webhook-Signature"])
    assert not provider_doc_verify(old, BODY, headers["X-Webhook-Signature"])


def test_hmac_sha256_uses_the_whsec_string_itself_as_key() -> None:
    secret = generate_secret()
    headers = sign(SignatureSpec("hmac-sha256"), [secret], MSG_ID, 1, BODY)
    assert provider_doc_verify(secret, BODY, headers["X-Webhook-Signature"])


# --- hmac-sha256-timestamped -----------------------------------------------------------


def provider_doc_verify_timestamped(secret: str, body: bytes, ts: str, received: str) -> bool:
    signed = f"{ts}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received)


def test_hmac_sha256_timestamped_default_headers() -> None:
    ts = 1700000123
    spec = SignatureSpec("hmac-sha256-timestamped")
    headers = sign(spec, [PLAIN_SECRET], MSG_ID, ts, BODY)
    assert set(headers) == {"X-Webhook-Signature", "X-Webhook-Timestamp"}
    assert headers["X-Webhook-Timestamp"] == str(ts)
    assert provider_doc_verify_timestamped(
        PLAIN_SECRET, BODY, headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"]
    )
    # The timestamp is covered: a replay with another timestamp fails.
    assert not provider_doc_verify_timestamped(
        PLAIN_SECRET, BODY, str(ts + 1), headers["X-Webhook-Signature"]
    )
    # And it is not a plain body HMAC.
    assert not provider_doc_verify(PLAIN_SECRET, BODY, headers["X-Webhook-Signature"])


def test_hmac_sha256_timestamped_custom_headers_are_honoured() -> None:
    spec = SignatureSpec("hmac-sha256-timestamped", header="X-Sig", timestamp_header="X-Sig-Ts")
    headers = sign(spec, [PLAIN_SECRET], MSG_ID, 42, BODY)
    assert set(headers) == {"X-Sig", "X-Sig-Ts"}
    assert headers["X-Sig-Ts"] == "42"
    assert provider_doc_verify_timestamped(PLAIN_SECRET, BODY, "42", headers["X-Sig"])


def test_hmac_sha256_timestamped_only_custom_timestamp_header() -> None:
    spec = SignatureSpec("hmac-sha256-timestamped", timestamp_header="X-When")
    headers = sign(spec, [PLAIN_SECRET], MSG_ID, 42, BODY)
    assert set(headers) == {"X-Webhook-Signature", "X-When"}


# --- token and none --------------------------------------------------------------------


def test_token_default_header_carries_the_secret() -> None:
    headers = sign(SignatureSpec("token"), [PLAIN_SECRET, "old-one-ignored"], MSG_ID, 1, BODY)
    assert headers == {"X-Webhook-Token": PLAIN_SECRET}


def test_token_custom_header() -> None:
    headers = sign(SignatureSpec("token", header="Authorization"), [PLAIN_SECRET], MSG_ID, 1, BODY)
    assert headers == {"Authorization": PLAIN_SECRET}


def test_redact_hides_the_token_whatever_the_header_case() -> None:
    spec = SignatureSpec("token")
    sent = {"Content-Type": "application/json", "x-webhook-token": PLAIN_SECRET}
    shown = redact(spec, sent)
    assert shown == {"Content-Type": "application/json", "x-webhook-token": REDACTED}
    assert REDACTED == "[redacted]"
    assert sent["x-webhook-token"] == PLAIN_SECRET  # the input is not modified
    custom = SignatureSpec("token", header="X-Auth")
    assert redact(custom, {"X-Auth": PLAIN_SECRET, "X-Other": "v"}) == {
        "X-Auth": "[redacted]",
        "X-Other": "v",
    }


@pytest.mark.parametrize("scheme", ["standard", "hmac-sha256", "hmac-sha256-timestamped", "none"])
def test_redact_leaves_other_schemes_alone(scheme: str) -> None:
    spec = SignatureSpec(scheme)
    secret = generate_secret()
    headers = {"Content-Type": "application/json", **sign(spec, [secret], MSG_ID, 7, BODY)}
    assert redact(spec, headers) == headers


def test_none_sets_no_headers() -> None:
    assert sign(SignatureSpec("none"), [PLAIN_SECRET], MSG_ID, 1, BODY) == {}


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signature scheme"):
        sign(SignatureSpec("md5", header="X-Sig"), [PLAIN_SECRET], MSG_ID, 1, BODY)


# --- secrets ---------------------------------------------------------------------------


def test_decode_standard_secret_returns_the_key_bytes() -> None:
    raw = bytes(range(32))
    assert decode_standard_secret(whsec(raw)) == raw
    assert len(decode_standard_secret(VECTOR_SECRET)) == 24


@pytest.mark.parametrize("size", [24, 32, 64])
def test_decode_standard_secret_accepts_24_to_64_bytes(size: int) -> None:
    assert len(decode_standard_secret(whsec(b"k" * size))) == size


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (base64.b64encode(b"k" * 32).decode(), "whsec_"),
        ("WHSEC_" + base64.b64encode(b"k" * 32).decode(), "whsec_"),
        ("", "whsec_"),
        ("whsec_not*base64!", "base64"),
        ("whsec_" + base64.b64encode(b"k" * 32).decode()[:-1], "base64"),
        ("whsec_caf\u00e9caf\u00e9", "base64"),
        (whsec(b"k" * 23), "24-64"),
        (whsec(b""), "24-64"),
        (whsec(b"k" * 65), "24-64"),
    ],
)
def test_decode_standard_secret_refuses(secret: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_standard_secret(secret)


def test_generate_secret_is_32_random_bytes() -> None:
    a, b = generate_secret(), generate_secret()
    assert a.startswith("whsec_")
    assert len(decode_standard_secret(a)) == 32
    assert len(decode_standard_secret(b)) == 32
    assert a != b


# --- verify_standard -------------------------------------------------------------------


def signed_request(secret: str, ts: int) -> dict[str, str]:
    return sign(SignatureSpec("standard"), [secret], MSG_ID, ts, BODY)


def test_verify_standard_accepts_a_good_request() -> None:
    secret = generate_secret()
    ts = now_s()
    headers = signed_request(secret, ts)
    assert verify_standard(secret, headers, BODY)
    assert verify_standard(secret, headers, BODY, now_s=ts)
    assert verify_standard(secret, headers, BODY, now_s=ts + 300)
    assert verify_standard(secret, headers, BODY, now_s=ts - 300)


def test_verify_standard_accepts_the_vector_and_any_header_case() -> None:
    headers = {
        "Webhook-Id": VECTOR_ID,
        "Webhook-Timestamp": str(VECTOR_TS),
        "Webhook-Signature": "v1,bm90LWl0 " + VECTOR_SIG,
    }
    assert verify_standard(VECTOR_SECRET, headers, VECTOR_BODY, now_s=VECTOR_TS)


def test_verify_standard_accepts_what_the_reference_library_signs() -> None:
    secret = generate_secret()
    ts = now_s()
    wh = Webhook(secret)
    from datetime import UTC, datetime

    sig = wh.sign(MSG_ID, datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(ts), "webhook-signature": sig}
    assert verify_standard(secret, headers, BODY, now_s=ts)


def test_verify_standard_rejects_a_tampered_body() -> None:
    secret = generate_secret()
    headers = signed_request(secret, now_s())
    assert not verify_standard(secret, headers, BODY.replace(b"1", b"2"))
    assert not verify_standard(secret, headers, BODY + b"\n")


def test_verify_standard_rejects_a_wrong_secret() -> None:
    headers = signed_request(generate_secret(), now_s())
    assert not verify_standard(generate_secret(), headers, BODY)


def test_verify_standard_rejects_a_malformed_secret() -> None:
    secret = generate_secret()
    headers = signed_request(secret, now_s())
    assert not verify_standard("not-a-whsec-secret", headers, BODY)


def test_verify_standard_rejects_a_stale_or_future_timestamp() -> None:
    secret = generate_secret()
    ts = 1700000000
    headers = signed_request(secret, ts)
    assert not verify_standard(secret, headers, BODY, now_s=ts + 301)
    assert not verify_standard(secret, headers, BODY, now_s=ts - 301)
    assert not verify_standard(secret, headers, BODY, now_s=ts + 3600, tolerance_s=3599)
    assert verify_standard(secret, headers, BODY, now_s=ts + 3600, tolerance_s=3600)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_standard_rejects_missing_headers(missing: str) -> None:
    secret = generate_secret()
    ts = now_s()
    headers = signed_request(secret, ts)
    del headers[missing]
    assert not verify_standard(secret, headers, BODY, now_s=ts)


def test_verify_standard_rejects_other_versions_and_garbage() -> None:
    secret = generate_secret()
    ts = now_s()
    headers = signed_request(secret, ts)
    good = headers["webhook-signature"]
    for bad in ["v2," + good[3:], good[3:], "", "v1,", "v1a," + good[3:]]:
        assert not verify_standard(secret, {**headers, "webhook-signature": bad}, BODY)
    for bad_ts in ["", "-1", "12.5", "abc", str(ts) + " "]:
        assert not verify_standard(secret, {**headers, "webhook-timestamp": bad_ts}, BODY)


def test_verify_standard_rejects_a_non_ascii_digit_timestamp() -> None:
    secret = generate_secret()
    headers = {**signed_request(secret, now_s()), "webhook-timestamp": "\u00b2"}
    assert not verify_standard(secret, headers, BODY)


# --- SignatureSpec ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names", "as_json"),
    [
        (
            SignatureSpec("standard"),
            ("webhook-signature", "webhook-timestamp", "webhook-id"),
            {"scheme": "standard", "algorithm": "hmac-sha256"},
        ),
        (
            SignatureSpec("hmac-sha256"),
            ("x-webhook-signature",),
            {"scheme": "hmac-sha256", "header": "X-Webhook-Signature"},
        ),
        (
            SignatureSpec("hmac-sha256", header="X-Hub-Signature-256"),
            ("x-hub-signature-256",),
            {"scheme": "hmac-sha256", "header": "X-Hub-Signature-256"},
        ),
        (
            SignatureSpec("hmac-sha256-timestamped"),
            ("x-webhook-signature", "x-webhook-timestamp"),
            {
                "scheme": "hmac-sha256-timestamped",
                "header": "X-Webhook-Signature",
                "timestamp_header": "X-Webhook-Timestamp",
            },
        ),
        (
            SignatureSpec("hmac-sha256-timestamped", header="X-Sig", timestamp_header="X-Ts"),
            ("x-sig", "x-ts"),
            {"scheme": "hmac-sha256-timestamped", "header": "X-Sig", "timestamp_header": "X-Ts"},
        ),
        (
            SignatureSpec("token"),
            ("x-webhook-token",),
            {"scheme": "token", "header": "X-Webhook-Token"},
        ),
        (
            SignatureSpec("token", header="Authorization"),
            ("authorization",),
            {"scheme": "token", "header": "Authorization"},
        ),
        (SignatureSpec("none"), (), {"scheme": "none"}),
    ],
)
def test_signature_spec_header_names_and_json(
    spec: SignatureSpec, names: tuple[str, ...], as_json: dict[str, str]
) -> None:
    assert sorted(spec.header_names()) == sorted(names)
    assert spec.to_json() == as_json


@pytest.mark.parametrize("scheme", SCHEMES)
def test_header_names_are_exactly_the_headers_sign_sets(scheme: str) -> None:
    spec = SignatureSpec(scheme)
    headers = sign(spec, [generate_secret()], MSG_ID, 1, BODY)
    assert {h.lower() for h in headers} == set(spec.header_names())


@pytest.mark.parametrize("scheme", ["standard", "hmac-sha256", "hmac-sha256-timestamped", "token"])
def test_header_names_follow_custom_names(scheme: str) -> None:
    spec = SignatureSpec(scheme, header="X-A", timestamp_header="X-B")
    headers = sign(spec, [generate_secret()], MSG_ID, 1, BODY)
    assert {h.lower() for h in headers} == set(spec.header_names())


def test_header_names_of_none_ignore_a_stray_header_option() -> None:
    spec = SignatureSpec("none", header="X-A")
    assert sign(spec, [PLAIN_SECRET], MSG_ID, 1, BODY) == {}
    assert spec.header_names() == ()


def test_default_spec_is_standard() -> None:
    assert SignatureSpec() == SignatureSpec("standard")
    assert SCHEMES == ("standard", "hmac-sha256", "hmac-sha256-timestamped", "token", "none")
