"""The normalized message from both sides: every field the gateway fills, the AI API reads.

The AI API ignores unknown fields (so a newer gateway cannot break it), which would also
hide a field added on one side only: this holds the two to docs/message-schema.md.
"""

from __future__ import annotations

import pytest

from celestial_nexus.schemas import NormalizedMessage
from wechat_gateway.messages import normalize, parse_xml

HEAD = (
    "<ToUserName>gh_1</ToUserName><FromUserName>oU</FromUserName>"
    "<CreateTime>1700000000</CreateTime>"
)
CALLBACKS = {
    "text": "<MsgType>text</MsgType><Content>你好</Content><MsgId>1</MsgId>",
    "voice": "<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format>"
    "<Recognition>你好</Recognition><MsgId>2</MsgId>",
    "location": "<MsgType>location</MsgType><Location_X>23.1</Location_X>"
    "<Location_Y>113.3</Location_Y><Scale>20</Scale><Label>广州</Label><MsgId>3</MsgId>",
    "link": "<MsgType>link</MsgType><Title>t</Title><Description>d</Description>"
    "<Url>https://e.x</Url><MsgId>4</MsgId>",
    "video": "<MsgType>video</MsgType><MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId>"
    "<MsgId>5</MsgId>",
    "subscribe": "<MsgType>event</MsgType><Event>subscribe</Event>"
    "<EventKey>qrscene_1</EventKey><Ticket>T</Ticket>",
    "LOCATION": "<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>23.1</Latitude>"
    "<Longitude>113.3</Longitude><Precision>119.4</Precision>",
    "VIEW": "<MsgType>event</MsgType><Event>VIEW</Event><EventKey>https://e.x</EventKey>"
    "<MenuId>7</MenuId>",
    "scancode_push": "<MsgType>event</MsgType><Event>scancode_push</Event><EventKey>k</EventKey>"
    "<ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>r</ScanResult></ScanCodeInfo>",
    "pic_weixin": "<MsgType>event</MsgType><Event>pic_weixin</Event><EventKey>k</EventKey>"
    "<SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum>abc</PicMd5Sum></item>"
    "</PicList></SendPicsInfo>",
    "location_select": "<MsgType>event</MsgType><Event>location_select</Event>"
    "<EventKey>k</EventKey><SendLocationInfo><Location_X>23</Location_X>"
    "<Location_Y>113</Location_Y><Scale>15</Scale><Label>广州</Label>"
    "<Poiname>塔</Poiname></SendLocationInfo>",
}


@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_the_ai_api_reads_every_field_the_gateway_sends(kind):
    sent = normalize(parse_xml(f"<xml>{HEAD}{CALLBACKS[kind]}</xml>".encode()))
    read = NormalizedMessage.model_validate(sent).model_dump(exclude_none=True)
    assert read == {name: value for name, value in sent.items() if value is not None}
