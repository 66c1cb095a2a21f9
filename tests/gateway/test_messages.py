"""wechat_gateway.messages: safe parsing and the normalized message for every type."""

import json
import time
import xml.etree.ElementTree as StdlibET

import pytest

from wechat_gateway import messages
from wechat_gateway.errors import BadRequest, HostileXml
from wechat_gateway.messages import dedup_key, normalize, parse_xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<xml><Content>&lol4;</Content></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><Content>&xxe;</Content></xml>"""

BASE = (
    "<ToUserName>gh_1</ToUserName><FromUserName>oU</FromUserName>"
    "<CreateTime>1700000000</CreateTime>"
)


def xml(inner: str) -> bytes:
    return f"<xml>{BASE}{inner}</xml>".encode()


def normalized(inner: str) -> dict:
    return normalize(parse_xml(xml(inner)))


EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd"><xml><Content>x</Content></xml>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><xml/>"""


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY, b"<!DOCTYPE xml><xml/>"],
)
def test_dtds_and_entities_are_refused_fast(body):
    started = time.monotonic()
    with pytest.raises(HostileXml):
        parse_xml(body)
    assert time.monotonic() - started < 1


def test_every_guard_defusedxml_installs_is_on_our_parser():
    """The guards are read off defusedxml's own parser: one it stopped installing (or
    renamed) must fail here, not leave our parser open."""
    assert all(callable(messages._GUARDS[name]) for name in messages.GUARD_HANDLERS)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<xml>",
        b"not xml",
        b"<xml><a></b></xml>",
        b"\xff\xfe",
        b'<?xml version="1.0" encoding="x-nope"?><xml/>',  # expat asks Python: LookupError
        b'<?xml version="1.0" encoding="rot13"?><xml/>',
    ],
)
def test_malformed_xml_is_a_bad_request(body):
    with pytest.raises(BadRequest):
        parse_xml(body)


def test_a_namespaced_element_is_never_read_as_a_field():
    """No WeChat field has a namespace; one that does must not pass for the plain field."""
    fields = parse_xml(b'<xml><a:Content xmlns:a="urn:x">forged</a:Content><MsgId>1</MsgId></xml>')
    assert "Content" not in fields and fields["MsgId"] == "1"
    with pytest.raises(BadRequest, match="expected <xml>"):
        parse_xml(b'<xml xmlns="urn:x"><Content>x</Content></xml>')


def test_an_undeclared_entity_is_a_bad_request_not_text():
    with pytest.raises(BadRequest, match="undefined entity"):
        parse_xml(b"<xml><Content>&xxe;</Content></xml>")


@pytest.mark.parametrize(
    "body",
    [
        "<xml><Content><![CDATA[a ]]]]><![CDATA[> b]]></Content><MsgId>1</MsgId></xml>",
        "<xml><Content>&lt;b&gt; &amp; &quot;&apos; &#20013;&#x6587; ]]&gt;</Content></xml>",
        "<xml>\n  <Content>\n  中文 ❤ 𝄞  \n</Content>\n  <Empty/><Blank>  </Blank>\n</xml>",
        '<?xml version="1.0" encoding="utf-8"?><xml><A k="v">1</A><!-- c --><?pi x?></xml>',
        "<xml><Content>first</Content><Content>second</Content></xml>",
    ],
)
def test_fields_read_as_the_standard_library_reads_them(body):
    """The fast parser must see the same text as ElementTree's own (C) parser."""
    raw = body.encode("utf-8")
    expected = {child.tag: (child.text or "").strip() for child in StdlibET.fromstring(raw)}
    assert parse_xml(raw) == expected


def test_root_must_be_xml():
    with pytest.raises(BadRequest):
        parse_xml(b"<root><a>1</a></root>")


def test_text_message():
    message = normalize(
        parse_xml(
            xml(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 ]]></Content>"
                "<MsgId>42</MsgId>"
            )
        )
    )
    assert message == {
        "schema_version": 1,
        "msg_id": "42",
        "dedup_key": "msg:42:oU:1700000000",
        "type": "text",
        "openid": "oU",
        "account_id": "gh_1",
        "create_time": 1700000000,
        "content": "你好",
    }


def test_voice_with_and_without_recognition():
    with_text = normalize(
        parse_xml(
            xml(
                "<MsgType>voice</MsgType><MediaId>m1</MediaId><Format>amr</Format>"
                "<Recognition>明天天气</Recognition><MsgId>1</MsgId>"
            )
        )
    )
    assert (with_text["media_id"], with_text["format"], with_text["recognition"]) == (
        "m1",
        "amr",
        "明天天气",
    )
    empty = normalize(
        parse_xml(
            xml(
                "<MsgType>voice</MsgType><MediaId>m1</MediaId><Format>amr</Format>"
                "<Recognition><![CDATA[]]></Recognition><MsgId>2</MsgId>"
            )
        )
    )
    assert "recognition" not in empty


def test_image_location_link_video():
    image = normalize(
        parse_xml(
            xml(
                "<MsgType>image</MsgType><PicUrl>http://p/1.jpg</PicUrl><MediaId>m</MediaId><MsgId>3</MsgId>"
            )
        )
    )
    assert image["pic_url"] == "http://p/1.jpg" and image["media_id"] == "m"
    location = normalize(
        parse_xml(
            xml(
                "<MsgType>location</MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y>"
                "<Scale>20</Scale><Label>广州</Label><MsgId>4</MsgId>"
            )
        )
    )
    assert (
        location["location_x"],
        location["location_y"],
        location["scale"],
        location["label"],
    ) == (23.134521, 113.358803, 20, "广州")
    link = normalize(
        parse_xml(
            xml(
                "<MsgType>link</MsgType><Title>t</Title><Description>d</Description><Url>http://u</Url>"
                "<MsgId>5</MsgId>"
            )
        )
    )
    assert (link["title"], link["description"], link["url"]) == ("t", "d", "http://u")
    video = normalize(
        parse_xml(
            xml(
                "<MsgType>shortvideo</MsgType><MediaId>v</MediaId><ThumbMediaId>th</ThumbMediaId><MsgId>6</MsgId>"
            )
        )
    )
    assert video["type"] == "shortvideo" and video["thumb_media_id"] == "th"


def test_events():
    subscribe = normalize(
        parse_xml(
            xml(
                "<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_123</EventKey>"
                "<Ticket>TICKET</Ticket>"
            )
        )
    )
    assert subscribe["msg_id"] is None
    assert subscribe["dedup_key"] == "evt:oU:1700000000:subscribe:qrscene_123"
    assert (subscribe["event"], subscribe["event_key"], subscribe["ticket"]) == (
        "subscribe",
        "qrscene_123",
        "TICKET",
    )
    location = normalize(
        parse_xml(
            xml(
                "<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>23.1</Latitude>"
                "<Longitude>113.3</Longitude><Precision>119.385</Precision>"
            )
        )
    )
    assert (location["latitude"], location["longitude"], location["precision"]) == (
        23.1,
        113.3,
        119.385,
    )
    view = normalize(
        parse_xml(
            xml(
                "<MsgType>event</MsgType><Event>VIEW</Event><EventKey>http://x</EventKey><MenuId>7</MenuId>"
            )
        )
    )
    assert view["menu_id"] == "7" and view["event_key"] == "http://x"


def test_menu_events_bring_their_details_up():
    """The examples of WeChat's custom-menu push events, with their nested containers."""
    scan = normalized(
        "<MsgType>event</MsgType><Event>scancode_waitmsg</Event><EventKey>6</EventKey>"
        "<ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>2</ScanResult></ScanCodeInfo>"
    )
    assert (scan["scan_type"], scan["scan_result"], scan["event_key"]) == ("qrcode", "2", "6")
    pics = normalized(
        "<MsgType>event</MsgType><Event>pic_photo_or_album</Event><EventKey>6</EventKey>"
        "<SendPicsInfo><Count>2</Count><PicList>"
        "<item><PicMd5Sum>5a75aaca956d97be686719218f275c6b</PicMd5Sum></item>"
        "<item><PicMd5Sum>7e5b4bd1a0ba0d1b3fe4e2ac2a7b4bc3</PicMd5Sum></item>"
        "</PicList></SendPicsInfo>"
    )
    assert pics["pic_count"] == 2
    assert pics["pic_md5_sums"] == [
        "5a75aaca956d97be686719218f275c6b",
        "7e5b4bd1a0ba0d1b3fe4e2ac2a7b4bc3",
    ]
    place = normalized(
        "<MsgType>event</MsgType><Event>location_select</Event><EventKey>6</EventKey>"
        "<SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y>"
        "<Scale>15</Scale><Label> 广州市海珠区客村艺苑路 106号</Label><Poiname></Poiname>"
        "</SendLocationInfo>"
    )
    assert (place["location_x"], place["location_y"], place["scale"]) == (23.0, 113.0, 15)
    assert place["label"] == "广州市海珠区客村艺苑路 106号" and "poiname" not in place
    assert json.loads(json.dumps(place, ensure_ascii=False)) == place  # the document is JSON


def test_a_lifted_detail_never_overrides_a_top_level_field():
    fields = parse_xml(
        xml(
            "<MsgType>event</MsgType><Event>scancode_push</Event>"
            "<ScanCodeInfo><FromUserName>oForged</FromUserName><ScanType>qrcode</ScanType>"
            "</ScanCodeInfo>"
        )
    )
    assert fields["FromUserName"] == "oU" and normalize(fields)["openid"] == "oU"


def test_dedup_keys_separate_what_must_be_separate():
    base = {"FromUserName": "oU", "CreateTime": "1", "MsgType": "text", "MsgId": "9"}
    assert dedup_key(base) != dedup_key({**base, "FromUserName": "oV"})  # MsgId collision
    assert dedup_key(base) != dedup_key({**base, "CreateTime": "2"})
    event = {"FromUserName": "oU", "CreateTime": "1", "MsgType": "event", "Event": "CLICK"}
    assert dedup_key({**event, "EventKey": "A"}) != dedup_key({**event, "EventKey": "B"})
    assert dedup_key(event) != dedup_key({**event, "Event": "LOCATION"})


@pytest.mark.parametrize("missing", ["ToUserName", "FromUserName", "CreateTime", "MsgType"])
def test_required_fields(missing):
    fields = {"ToUserName": "gh", "FromUserName": "oU", "CreateTime": "1", "MsgType": "text"}
    del fields[missing]
    with pytest.raises(BadRequest):
        normalize(fields)


@pytest.mark.parametrize("inner", ["<CreateTime>soon</CreateTime>", "<Scale>big</Scale>"])
def test_badly_typed_fields(inner):
    fields = {"ToUserName": "gh", "FromUserName": "oU", "CreateTime": "1", "MsgType": "location"}
    fields.update(parse_xml(f"<xml>{inner}</xml>".encode()))
    with pytest.raises(BadRequest):
        normalize(fields)
