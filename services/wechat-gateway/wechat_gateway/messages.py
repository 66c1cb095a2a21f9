"""Untrusted callback XML -> the normalized message of docs/message-schema.md.

defusedxml refuses a DOCTYPE outright (so billion-laughs and external entities fail
before anything is expanded), and the body size is capped by the caller.
https://developers.weixin.qq.com/doc/service/en/Message_Management/Receiving_standard_messages.html
https://developers.weixin.qq.com/doc/service/en/Message_Management/Receiving_event_pushes.html
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import BadRequest, HostileXml

SCHEMA_VERSION = 1


def text_list(value: Any) -> list[str]:
    """PicList's md5 sums as a list; a lone top-level element's text as a list of one."""
    return [text for text in (value if isinstance(value, list) else [value]) if text]


# XML element -> (field of the normalized message, converter)
_FIELDS: dict[str, tuple[str, Any]] = {
    "Content": ("content", str),
    "MediaId": ("media_id", str),
    "PicUrl": ("pic_url", str),
    "Format": ("format", str),
    "Recognition": ("recognition", str),
    "ThumbMediaId": ("thumb_media_id", str),
    "Location_X": ("location_x", float),
    "Location_Y": ("location_y", float),
    "Scale": ("scale", int),
    "Label": ("label", str),
    "Title": ("title", str),
    "Description": ("description", str),
    "Url": ("url", str),
    "Event": ("event", str),
    "EventKey": ("event_key", str),
    "Ticket": ("ticket", str),
    "Latitude": ("latitude", float),
    "Longitude": ("longitude", float),
    "Precision": ("precision", float),
    "MenuId": ("menu_id", str),
    # Inside the menu events' containers (see _CONTAINERS), lifted to the top level:
    "ScanType": ("scan_type", str),
    "ScanResult": ("scan_result", str),
    "Poiname": ("poiname", str),
    "Count": ("pic_count", int),
    "PicMd5Sum": ("pic_md5_sums", text_list),
}
# Menu events carry their details one level down: scancode_push/scancode_waitmsg in
# ScanCodeInfo, location_select in SendLocationInfo (Location_X ... as a location message),
# pic_sysphoto/pic_photo_or_album/pic_weixin in SendPicsInfo (Count, PicList of PicMd5Sum).
# https://developers.weixin.qq.com/doc/service/en/Custom_Menus/Custom_Menu_Push_Events.html
_CONTAINERS = frozenset({"ScanCodeInfo", "SendLocationInfo", "SendPicsInfo"})


# The handlers defusedxml installs on its expat parser to refuse a DOCTYPE, an entity
# declaration and an external reference (DTDForbidden, EntitiesForbidden,
# ExternalReferenceForbidden).
GUARD_HANDLERS = (
    "StartDoctypeDeclHandler",
    "EntityDeclHandler",
    "UnparsedEntityDeclHandler",
    "ExternalEntityRefHandler",
)


def _defused_guards() -> dict[str, Any]:
    """defusedxml's own guards, read off a parser it set up with every guard on.

    They keep no state, so every parse shares them. Building defusedxml's parser for each
    document cost more than parsing it (ElementTree's pure-Python XMLParser behind it sets
    up handlers WeChat's XML never uses), and a safe-mode callback parses twice: its
    envelope, then the decrypted message.
    """
    configured = SafeET.DefusedXMLParser(
        forbid_dtd=True, forbid_entities=True, forbid_external=True
    ).parser
    return {name: getattr(configured, name) for name in GUARD_HANDLERS}


_GUARDS = _defused_guards()


def _parse_tree(body: bytes) -> Element:
    """The document's root element: a bare expat parser with defusedxml's guards feeding the
    C TreeBuilder. A namespaced name keeps expat's spelling (`urn:x}Content`, not
    `{urn:x}Content`): never a field WeChat sends. An undefined entity is expat's own error.
    """
    builder = TreeBuilder()
    parser = expat.ParserCreate(None, "}")
    for name, guard in _GUARDS.items():
        setattr(parser, name, guard)
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(body, True)
    return builder.close()


def parse_xml(body: bytes) -> dict[str, Any]:
    """The top-level elements of a WeChat XML document as {tag: text}, plus the menu events'
    details (_CONTAINERS) lifted beside them.

    Raises HostileXml for DTDs/entities and BadRequest for anything that is not XML.
    """
    try:
        root = _parse_tree(body)
    except DefusedXmlException as exc:
        raise HostileXml(f"XML with a DTD or entities refused ({type(exc).__name__})") from None
    except (expat.ExpatError, ValueError, LookupError) as exc:  # LookupError: unknown encoding
        raise BadRequest(f"malformed XML: {exc}") from None
    if root.tag != "xml":
        raise BadRequest(f"root element is <{root.tag}>, expected <xml>")
    fields: dict[str, Any] = {child.tag: (child.text or "").strip() for child in root}
    for tag in _CONTAINERS.intersection(fields):
        for name, value in _container_fields(root.find(tag)).items():
            fields.setdefault(name, value)  # a top-level element wins over a lifted one
    return fields


def _container_fields(container: Any) -> dict[str, Any]:
    """A menu event container's elements as {tag: text}; PicList as PicMd5Sum: [md5, ...]."""
    lifted: dict[str, Any] = {}
    for element in container:
        if element.tag == "PicList":
            lifted["PicMd5Sum"] = [(item.findtext("PicMd5Sum") or "").strip() for item in element]
        elif not len(element):
            lifted[element.tag] = (element.text or "").strip()
    return lifted


def dedup_key(fields: dict[str, Any]) -> str:
    """The key under which WeChat's retries of one delivery are recognised.

    Messages: MsgId + FromUserName + CreateTime (MsgId alone has collided, WxJava#333).
    Events have no MsgId: FromUserName + CreateTime + Event + EventKey.
    """
    sender = fields.get("FromUserName", "")
    created = fields.get("CreateTime", "")
    msg_id = fields.get("MsgId") or fields.get("MsgID")
    if msg_id and fields.get("MsgType", "").lower() != "event":
        return f"msg:{msg_id}:{sender}:{created}"
    return f"evt:{sender}:{created}:{fields.get('Event', '')}:{fields.get('EventKey', '')}"


def normalize(fields: dict[str, Any]) -> dict[str, Any]:
    """The normalized message document (see docs/message-schema.md)."""
    for required in ("ToUserName", "FromUserName", "CreateTime", "MsgType"):
        if not fields.get(required):
            raise BadRequest(f"message lacks <{required}>")
    try:
        create_time = int(fields["CreateTime"])
    except ValueError:
        raise BadRequest("<CreateTime> is not an integer") from None
    message: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "msg_id": fields.get("MsgId") or fields.get("MsgID") or None,
        "dedup_key": dedup_key(fields),
        "type": fields["MsgType"].lower(),
        "openid": fields["FromUserName"],
        "account_id": fields["ToUserName"],
        "create_time": create_time,
    }
    for tag, value in fields.items():
        spec = _FIELDS.get(tag)
        if spec is None or not value:
            continue  # not a field we map, or empty: an empty <Recognition/> is "none"
        name, convert = spec
        try:
            message[name] = convert(value)
        except ValueError:
            raise BadRequest(f"<{tag}> has value {value!r}, not a {convert.__name__}") from None
    return message
