"""wechat_gateway.crypto, cross-checked against wechatpy and known-answer vectors."""

import base64
import concurrent.futures
import struct

import pytest
from Crypto.Cipher import AES
from wechatpy.crypto import PrpCrypto
from wechatpy.exceptions import InvalidAppIdException

from wechat_gateway.crypto import (
    CryptoError,
    MessageCipher,
    decode_aes_key,
    decrypt_with_any,
    pkcs7_pad,
    pkcs7_unpad,
)

ENCODING_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx0123456789abcdef"
KEY = decode_aes_key(ENCODING_KEY)

MESSAGES = {
    "empty": "",
    "ascii": "<xml><Content><![CDATA[hello]]></Content></xml>",
    "chinese": "<xml><Content><![CDATA[你好，公众号！令牌轮换怎么做？]]></Content></xml>",
    "block_edge_31": "x" * 31,
    "block_edge_32": "y" * 32,
    "block_edge_12": "z" * 12,  # 16 + 4 + 12 = 32: a whole block of padding
    "2000_chars": "<xml><Content><![CDATA[" + "长" * 2000 + "]]></Content></xml>",
    "mixed": "WeChat 微信 🚀 " * 300,
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_wechatpy_decrypts_what_we_encrypt(name):
    text = MESSAGES[name]
    encrypted = MessageCipher(KEY, APPID).encrypt(text.encode())
    assert PrpCrypto(KEY).decrypt(encrypted, APPID) == text


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_we_decrypt_what_wechatpy_encrypts(name):
    text = MESSAGES[name]
    encrypted = PrpCrypto(KEY).encrypt(text, APPID).decode()
    assert MessageCipher(KEY, APPID).decrypt(encrypted).decode() == text


def test_one_cipher_serves_message_after_message_in_both_directions():
    """A cipher keeps its AES state from message to message: every one must still be plain
    AES-CBC from the IV, whatever size the messages before it had."""
    cipher = MessageCipher(KEY, APPID)
    for name in sorted(MESSAGES) * 3:  # a PrpCrypto serves one call: its cipher object is used up
        text = MESSAGES[name]
        assert PrpCrypto(KEY).decrypt(cipher.encrypt(text.encode()), APPID) == text
        assert cipher.decrypt(PrpCrypto(KEY).encrypt(text, APPID).decode()).decode() == text


def test_one_cipher_shared_by_threads_gives_each_message_its_own_exact_ciphertext():
    """Threads sharing a cipher (the C call releases the GIL) must each get what a fresh
    cipher would give: the chain is taken by one message at a time."""
    cipher = MessageCipher(KEY, APPID)
    texts = [(MESSAGES["2000_chars"] + str(i)).encode() for i in range(400)]

    def encrypt(text: bytes) -> str:
        return cipher.encrypt(text, random_bytes=bytes)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        encrypted = list(pool.map(encrypt, texts))
    assert encrypted == [MessageCipher(KEY, APPID).encrypt(t, random_bytes=bytes) for t in texts]


def test_wechatpy_rejects_our_frame_for_another_appid():
    encrypted = MessageCipher(KEY, "wxOTHER").encrypt(b"<xml/>")
    with pytest.raises(InvalidAppIdException):
        PrpCrypto(KEY).decrypt(encrypted, APPID)


def test_known_answer_all_zero_key():
    """43 x 'A' decodes to 32 zero bytes (the official safe-mode walkthrough's key)."""
    key = decode_aes_key("A" * 43)
    assert key == bytes(32)
    cipher = MessageCipher(key, "wxAPPID")
    encrypted = cipher.encrypt(b"<xml>hi</xml>", random_bytes=lambda n: b"R" * n)
    frame = b"R" * 16 + struct.pack(">I", 13) + b"<xml>hi</xml>" + b"wxAPPID"
    expected = AES.new(key, AES.MODE_CBC, key[:16]).encrypt(pkcs7_pad(frame, 32))
    assert base64.b64decode(encrypted) == expected
    assert len(expected) % 32 == 0
    assert cipher.decrypt(encrypted) == b"<xml>hi</xml>"


def test_deterministic_with_injected_randomness():
    cipher = MessageCipher(KEY, APPID)
    same = [cipher.encrypt(b"abc", random_bytes=lambda n: bytes(n)) for _ in range(2)]
    assert same[0] == same[1]
    assert cipher.encrypt(b"abc") != cipher.encrypt(b"abc")  # real randomness differs


def test_pkcs7_pads_to_32_byte_blocks():
    for size in range(0, 70):
        padded = pkcs7_pad(b"a" * size)
        assert len(padded) % 32 == 0 and 1 <= padded[-1] <= 32
        assert pkcs7_unpad(padded) == b"a" * size


@pytest.mark.parametrize(
    "bad", [b"abc\x00", b"a" * 31 + b"\x21", b"a" * 28 + b"\x03\x04\x04\x04", b""]
)
def test_pkcs7_rejects_bad_padding(bad):
    with pytest.raises(CryptoError) as info:
        pkcs7_unpad(bad)
    assert info.value.reason == "padding"


def _raw_encrypt(frame: bytes, key: bytes = KEY) -> str:
    return base64.b64encode(AES.new(key, AES.MODE_CBC, key[:16]).encrypt(frame)).decode()


def test_length_prefix_beyond_frame_is_refused():
    frame = b"R" * 16 + struct.pack(">I", 5000) + b"<xml/>" + APPID.encode()
    with pytest.raises(CryptoError) as info:
        MessageCipher(KEY, APPID).decrypt(_raw_encrypt(pkcs7_pad(frame)))
    assert info.value.reason == "length"


@pytest.mark.parametrize(
    ("encrypted", "reason"),
    [("not base64!!", "base64"), ("", "base64"), (base64.b64encode(b"x" * 20).decode(), "base64")],
)
def test_garbage_ciphertext(encrypted, reason):
    with pytest.raises(CryptoError) as info:
        MessageCipher(KEY, APPID).decrypt(encrypted)
    assert info.value.reason == reason


def test_wrong_appid_is_refused():
    encrypted = PrpCrypto(KEY).encrypt("<xml/>", "wxSOMEONEELSE").decode()
    with pytest.raises(CryptoError) as info:
        MessageCipher(KEY, APPID).decrypt(encrypted)
    assert info.value.reason == "appid"


def test_key_rotation_tries_previous_keys():
    old = decode_aes_key("Z" * 43)
    encrypted = PrpCrypto(old).encrypt("<xml>old</xml>", APPID).decode()
    ciphers = [MessageCipher(KEY, APPID), MessageCipher(old, APPID)]
    assert decrypt_with_any(ciphers, encrypted) == (1, b"<xml>old</xml>")
    with pytest.raises(CryptoError):
        decrypt_with_any(ciphers[:1], encrypted)


@pytest.mark.parametrize(
    "value",
    ["short", "A" * 44, "A" * 42 + "-", "A" * 42 + "=", "中" * 43],
)
def test_invalid_encoding_aes_keys(value):
    with pytest.raises(ValueError):
        decode_aes_key(value)
