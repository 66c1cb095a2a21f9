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
import threading
from collections.abc import Callable, Sequence

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


class MessageCipher:
    """Encrypts and decrypts the `Encrypt` field for one key and one AppID.

    Built once per key (`AccountSettings.ciphers`): setting up an AES object costs more
    than enciphering a reply, so each cipher keeps two for good. Both give exactly
    AES-256-CBC with IV = key[:16], as a fresh object would (tests cross-check wechatpy):
    - decryption runs ECB over the whole ciphertext and XORs each block with the ciphertext
      block before it (the IV for the first): CBC decryption by definition, and stateless;
    - encryption runs one CBC object whose chain carries on from the last block of the
      previous message. Its first block goes in XORed with that block and the IV, so CBC's
      own XOR leaves `first block XOR IV`, as a chain starting at the IV would. A lock keeps
      two threads off the chain (the C call releases the GIL).
    """

    def __init__(self, key: bytes, appid: str) -> None:
        self.appid = appid
        self._appid = appid.encode("utf-8")
        self._iv = key[:16]
        self._blocks = AES.new(key, AES.MODE_ECB)
        self._chain = AES.new(key, AES.MODE_CBC, self._iv)
        self._chain_end = self._iv  # the ciphertext block the encryptor's chain ends on
        self._chain_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MessageCipher(appid={self.appid!r})"

    def encrypt(self, message: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
        """Base64 ciphertext of one framed message; `random_bytes` is injectable for KATs."""
        frame = pkcs7_pad(
            random_bytes(RANDOM_PREFIX_BYTES)
            + struct.pack(">I", len(message))
            + message
            + self._appid
        )
        with self._chain_lock:
            first = _xor(frame[:16], self._chain_end, self._iv)
            ciphertext = self._chain.encrypt(first + frame[16:])
            self._chain_end = ciphertext[-16:]
        return base64.b64encode(ciphertext).decode("ascii")

    def decrypt(self, encrypted: str) -> bytes:
        """The message inside `encrypted`; CryptoError names what failed."""
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("base64", "Encrypt is not valid base64") from None
        if not raw or len(raw) % 16:
            raise CryptoError("base64", f"ciphertext of {len(raw)} bytes is not whole AES blocks")
        frame = pkcs7_unpad(_xor(self._blocks.decrypt(raw), self._iv + raw[:-16]))
        if len(frame) < RANDOM_PREFIX_BYTES + 4:
            raise CryptoError("length", "frame shorter than its header")
        (length,) = struct.unpack(">I", frame[RANDOM_PREFIX_BYTES : RANDOM_PREFIX_BYTES + 4])
        body_end = RANDOM_PREFIX_BYTES + 4 + length
        if body_end > len(frame):
            raise CryptoError("length", f"length prefix {length} exceeds the frame")
        if frame[body_end:] != self._appid:
            raise CryptoError("appid", "the AppID inside the message is not WECHAT_APPID")
        return frame[RANDOM_PREFIX_BYTES + 4 : body_end]


def _xor(first: bytes, *others: bytes) -> bytes:
    """Byte strings of one length XORed together (as big integers: one C loop each)."""
    value = int.from_bytes(first, "big")
    for other in others:
        value ^= int.from_bytes(other, "big")
    return value.to_bytes(len(first), "big")


def decrypt_with_any(ciphers: Sequence[MessageCipher], encrypted: str) -> tuple[int, bytes]:
    """(index of the cipher that worked, message): the current key first, then previous ones.

    A wrong key almost always fails the padding or length check; the AppID check
    catches the rest. On failure the current key's error is the one worth reporting.
    """
    first_error: CryptoError | None = None
    for index, cipher in enumerate(ciphers):
        try:
            return index, cipher.decrypt(encrypted)
        except CryptoError as exc:
            first_error = first_error or exc
    raise first_error or CryptoError("key", "no AES key configured")
