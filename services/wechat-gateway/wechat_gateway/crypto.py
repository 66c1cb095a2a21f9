"""WeChat message encryption (safe and compatible modes): AES-256-CBC with WeChat's framing.

key = base64(EncodingAESKey + "="), 32 bytes; IV = key[:16]; PKCS#7 padding to 32-byte
blocks; plaintext = 16 random bytes + 4-byte big-endian length + message + AppID.
Unlike the reference samples we check the padding bytes, the length prefix and the AppID,
and report which of them failed (they map to WeChat's -40007 / -40005 error codes).
https://developers.weixin.qq.com/doc/oplatform/en/Third-party_Platforms/Message_Encryption/Technical_Plan.html
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from Crypto.Cipher import AES

BLOCK_SIZE = 32
RANDOM_PREFIX_BYTES = 16
ENCODING_AES_KEY_LENGTH = 43


class CryptoError(ValueError):
    """A ciphertext that does not decrypt to a valid frame; `reason` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey; ValueError says what is wrong."""
    if len(encoding_aes_key) != ENCODING_AES_KEY_LENGTH:
        raise ValueError(
            f"an EncodingAESKey has {ENCODING_AES_KEY_LENGTH} characters, this one has "
            f"{len(encoding_aes_key)}"
        )
    if not encoding_aes_key.isascii() or not encoding_aes_key.isalnum():
        raise ValueError("an EncodingAESKey holds only the letters A-Z, a-z and digits 0-9")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the EncodingAESKey does not decode as base64 ({exc})") from None
    if len(key) != 32:
        raise ValueError("the EncodingAESKey does not decode to 32 bytes")
    return key


def pkcs7_pad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    """Pad to a multiple of block_size (WeChat uses 32, not AES's 16)."""
    amount = block_size - len(data) % block_size
    return data + bytes([amount]) * amount


def pkcs7_unpad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    """Remove checked padding: the amount must be 1..block_size and every pad byte equal."""
    if not data:
        raise CryptoError("padding", "empty plaintext")
    amount = data[-1]
    if not 1 <= amount <= block_size or amount > len(data):
        raise CryptoError("padding", f"padding length {amount} outside 1..{block_size}")
    if data[-amount:] != bytes([amount]) * amount:
        raise CryptoError("padding", "padding bytes are not all equal")
    return data[:-amount]


@dataclass(frozen=True)
class MessageCipher:
    """Encrypts and decrypts the `Encrypt` field for one key and one AppID."""

    key: bytes
    appid: str

    def __repr__(self) -> str:
        return f"MessageCipher(appid={self.appid!r})"

    def _cipher(self):
        return AES.new(self.key, AES.MODE_CBC, self.key[:16])

    def encrypt(self, message: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
        """Base64 ciphertext of one framed message; `random_bytes` is injectable for KATs."""
        frame = (
            random_bytes(RANDOM_PREFIX_BYTES)
            + struct.pack(">I", len(message))
            + message
            + self.appid.encode("utf-8")
        )
        return base64.b64encode(self._cipher().encrypt(pkcs7_pad(frame))).decode("ascii")

    def decrypt(self, encrypted: str) -> bytes:
        """The message inside `encrypted`; CryptoError names what failed."""
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("base64", "Encrypt is not valid base64") from None
        if not raw or len(raw) % 16:
            raise CryptoError("base64", f"ciphertext of {len(raw)} bytes is not whole AES blocks")
        frame = pkcs7_unpad(self._cipher().decrypt(raw))
        if len(frame) < RANDOM_PREFIX_BYTES + 4:
            raise CryptoError("length", "frame shorter than its header")
        (length,) = struct.unpack(">I", frame[RANDOM_PREFIX_BYTES : RANDOM_PREFIX_BYTES + 4])
        body_end = RANDOM_PREFIX_BYTES + 4 + length
        if body_end > len(frame):
            raise CryptoError("length", f"length prefix {length} exceeds the frame")
        found_appid = frame[body_end:]
        if found_appid != self.appid.encode("utf-8"):
            raise CryptoError("appid", "the AppID inside the message is not WECHAT_APPID")
        return frame[RANDOM_PREFIX_BYTES + 4 : body_end]


def decrypt_with_keys(keys: Sequence[bytes], appid: str, encrypted: str) -> tuple[int, bytes]:
    """(index of the key that worked, message): the current key first, then previous ones.

    A wrong key almost always fails the padding or length check; the AppID check
    catches the rest. On failure the current key's error is the one worth reporting.
    """
    first_error: CryptoError | None = None
    for index, key in enumerate(keys):
        try:
            return index, MessageCipher(key, appid).decrypt(encrypted)
        except CryptoError as exc:
            first_error = first_error or exc
    raise first_error or CryptoError("key", "no AES key configured")
