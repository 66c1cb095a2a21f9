"""wechat_gateway.signature: the official worked example, wechatpy, rotation, skew."""

import pytest
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from wechat_gateway.signature import compute_signature, matching_token, timestamp_within_skew

# WeChat's worked example: Token AAAAA, ts 1714036504, nonce 1514711492.
OFFICIAL = ("AAAAA", "1714036504", "1514711492")


def test_official_worked_example():
    digest = compute_signature(*OFFICIAL)
    assert digest.startswith("f464b24f") and digest.endswith("1441696")


@pytest.mark.parametrize("token", ["AAAAA", "celestial-dev-token", "t0k3n中文"])
def test_agrees_with_wechatpy(token):
    signature = compute_signature(token, "1700000000", "987654321")
    check_signature(token, signature, "1700000000", "987654321")  # raises on mismatch
    with pytest.raises(InvalidSignatureException):
        check_signature(
            token,
            compute_signature(token + "x", "1700000000", "987654321"),
            "1700000000",
            "987654321",
        )


def test_msg_signature_covers_encrypt_field():
    with_encrypt = compute_signature("tok", "1", "2", "ENCRYPTED")
    assert with_encrypt != compute_signature("tok", "1", "2")
    assert matching_token(with_encrypt, ["tok"], "1", "2", "ENCRYPTED") == "tok"
    assert matching_token(with_encrypt, ["tok"], "1", "2", "TAMPERED") is None


def test_any_accepted_token_matches_during_rotation():
    signature = compute_signature("oldtoken", "1700000000", "42")
    assert matching_token(signature, ["newtoken", "oldtoken"], "1700000000", "42") == "oldtoken"
    assert matching_token(signature, ["newtoken"], "1700000000", "42") is None


def test_uppercase_and_padded_signature_still_matches():
    signature = compute_signature("tok", "1", "2")
    assert matching_token(f" {signature.upper()} ", ["tok"], "1", "2") == "tok"


def test_non_ascii_garbage_signature_does_not_crash():
    assert matching_token("签名", ["tok"], "1", "2") is None


@pytest.mark.parametrize(
    ("timestamp", "now", "skew", "ok"),
    [
        ("1000", 1000, 300, True),
        ("700", 1000, 300, True),
        ("699", 1000, 300, False),
        ("1301", 1000, 300, False),
        ("1", 1000, 0, True),
        ("abc", 1000, 300, False),
    ],
)
def test_clock_skew_window(timestamp, now, skew, ok):
    assert timestamp_within_skew(timestamp, now, skew) is ok
