"""The normalized message and the reply: the contract with the gateway (docs/message-schema.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_BYTES = 2000  # one WeChat text bubble holds about 2048 bytes of UTF-8; keep a margin
MAX_FIELD_CHARS = 20000  # any string field but the user's text: longer is no WeChat message
# The user's text (or voice recognition) beyond this is cut, not refused: the user still gets
# an answer to what they began with, and the prompt stays bounded.
MAX_QUESTION_CHARS = 4000


class NormalizedMessage(BaseModel):
    """One WeChat callback as the gateway normalized it: any message type or event."""

    # Unknown fields are ignored so a newer gateway can add fields without breaking us.
    model_config = ConfigDict(extra="ignore", str_max_length=MAX_FIELD_CHARS)

    schema_version: Literal[1] = Field(description="Contract version; always 1.")
    msg_id: str | None = Field(None, description="WeChat's MsgId; events have none.")
    dedup_key: str = Field(min_length=1, description="The gateway's dedup key.")
    type: str = Field(
        min_length=1,
        max_length=32,
        description="MsgType lower-cased: text, image, voice, video, shortvideo, location, "
        "link, event, ...",
    )
    openid: str = Field(min_length=1, max_length=128, description="FromUserName: the user.")
    account_id: str = Field(description="ToUserName: the Official Account's original id.")
    create_time: int = Field(description="CreateTime, Unix seconds.")
    # The gateway drops empty elements, so a text without content (or an event without a
    # name) is valid: it gets the help text (or nothing), not a 422 the user would pay for.
    content: str | None = Field(None, description="Text message content.")
    media_id: str | None = None
    pic_url: str | None = None
    format: str | None = Field(None, description="Voice format (amr, speex).")
    recognition: str | None = Field(None, description="Voice recognition text, if WeChat sent it.")
    thumb_media_id: str | None = None
    location_x: float | None = None
    location_y: float | None = None
    scale: int | None = None
    label: str | None = None
    title: str | None = None
    description: str | None = None
    url: str | None = None
    event: str | None = Field(None, description="Event name as sent (subscribe, CLICK, ...).")
    event_key: str | None = Field(None, description="qrscene_<scene>, menu key or URL.")
    ticket: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    precision: float | None = None
    menu_id: str | None = None
    # Custom-menu push events (their nested ScanCodeInfo / SendPicsInfo / SendLocationInfo).
    scan_type: str | None = Field(None, description="scancode_* events: qrcode, barcode ...")
    scan_result: str | None = Field(None, description="scancode_* events: what was scanned.")
    pic_count: int | None = Field(None, description="pic_* events: pictures sent.")
    pic_md5_sums: list[str] | None = Field(None, description="pic_* events: their MD5 sums.")
    poiname: str | None = Field(None, description="location_select event: the place's name.")

    @field_validator("content", "recognition", mode="before")
    @classmethod
    def _cut_long_text(cls, value: object) -> object:
        return value[:MAX_QUESTION_CHARS] if isinstance(value, str) else value

    @field_validator("type")
    @classmethod
    def _lower_type(cls, value: str) -> str:
        return value.lower()


class TextReply(BaseModel):
    type: Literal["text"] = "text"
    content: str = Field(description="At most 2000 bytes of UTF-8 (one WeChat bubble).")


class ImageReply(BaseModel):
    type: Literal["image"] = "image"
    media_id: str


class Article(BaseModel):
    title: str
    description: str = ""
    pic_url: str = ""
    url: str = ""


class NewsReply(BaseModel):
    type: Literal["news"] = "news"
    articles: list[Article] = Field(min_length=1, max_length=1)


Reply = Annotated[TextReply | ImageReply | NewsReply, Field(discriminator="type")]


class ReplyEnvelope(BaseModel):
    """What POST /v1/reply answers; `reply: null` means nothing to say."""

    reply: Reply | None
