"""Development media: the demo catalog's audio is generated from its recipes and served by the
API where development stream URLs point, signed, with range requests, as a browser needs."""

from __future__ import annotations

import io
import wave
from array import array
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from sonicus import clock, create_app, dev_media
from sonicus.extensions import db

BEATS = {"kind": "binaural", "carrier": 200, "beat": 8}
RAIN = {"kind": "noise", "color": "pink"}


@pytest.fixture(scope="module")
def dev_app(make_config, tmp_path_factory):
    """The API serving its own media (no MEDIA_BASE_URL), with two generated files."""
    instance = tmp_path_factory.mktemp("instance")
    app = create_app(make_config(MEDIA_BASE_URL=None, MEDIA_URL_SECRET=None,
                                 INSTANCE_PATH=str(instance)))
    entries = [{"slug": "beats", "title": "Beats", "category": "focus",
                "image_path": "art/beats.svg",
                "tracks": [{"media_path": "focus/beats/01.wav", "sound": BEATS},
                           {"media_path": "focus/beats/02.wav"}],
                "sound": RAIN}]
    counts = dev_media.generate(entries, instance / "media")
    assert counts["written"] == 3
    assert dev_media.generate(entries, instance / "media")["kept"] == 3  # once only
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def beats(dev_app, make_package, make_user, auth, db_session):
    package = make_package("beats", category="focus", tracks=(600, 600))
    for track, path in zip(package.tracks, ("focus/beats/01.wav", "focus/beats/02.wav"),
                           strict=True):
        track.media_path = path
    package.image_path = "art/beats.svg"
    db_session.commit()
    make_user()
    client = dev_app.test_client()
    res = client.get(f"/api/packages/{package.id}", headers=auth())
    assert res.status_code == 200, res.get_json()
    return client, res.get_json()["data"]


def _local(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:18100"
    return f"{parts.path}?{parts.query}"


def _zero_crossings(samples) -> int:
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))


def test_a_stream_url_plays_binaural_beats(beats):
    client, package = beats
    url = package["tracks"][0]["stream_url"]
    assert "/dev-media/focus/beats/01.wav?" in url
    res = client.get(_local(url))
    assert res.status_code == 200
    assert res.headers["Content-Type"] == "audio/wav"
    assert res.headers["Accept-Ranges"] == "bytes"
    assert res.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    with wave.open(io.BytesIO(res.data)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == \
            (2, 2, dev_media.RATE)
        seconds = audio.getnframes() / audio.getframerate()
        pcm = array("h", audio.readframes(audio.getnframes()))
    assert seconds == dev_media.LOOP_SECONDS
    left, right = pcm[0::2], pcm[1::2]
    # 200 Hz in the left ear, 208 Hz in the right: 8 Hz beats between them
    assert _zero_crossings(left) / seconds == pytest.approx(400, abs=2)
    assert _zero_crossings(right) / seconds == pytest.approx(416, abs=2)
    assert max(left) > 10000  # audible, not silence

    noise = client.get(_local(package["tracks"][1]["stream_url"]))
    with wave.open(io.BytesIO(noise.data)) as audio:
        assert audio.getnchannels() == 1  # the package's recipe: pink noise, mono


def test_range_requests(beats):
    client, package = beats
    path = _local(package["tracks"][0]["stream_url"])
    whole = client.get(path).data
    head = client.get(path, headers={"Range": "bytes=0-43"})
    assert head.status_code == 206
    assert head.headers["Content-Range"] == f"bytes 0-43/{len(whole)}"
    assert head.data == whole[:44] and head.data.startswith(b"RIFF") and b"WAVE" in head.data
    middle = client.get(path, headers={"Range": "bytes=1000-1999"})
    assert middle.status_code == 206 and middle.data == whole[1000:2000]
    tail = client.get(path, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == whole[-10:]
    past = client.get(path, headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(whole)}"


def test_audio_needs_a_valid_unexpired_signature(beats, set_clock):
    client, package = beats
    path = _local(package["tracks"][0]["stream_url"])
    bare = path.split("?")[0]
    assert client.get(bare).status_code == 403
    assert client.get(path.replace("01.wav", "02.wav")).status_code == 403  # another file
    assert client.get(path.replace("st=", "st=x")).status_code == 403
    set_clock(clock.now() + timedelta(hours=2))
    res = client.get(path)
    assert res.status_code == 403 and res.get_json()["code"] == "forbidden"


def test_a_signature_tampered_with_characters_outside_ascii_is_403_not_500(beats):
    """A link whose signature was swapped for non-ASCII characters (percent-encoded UTF-8,
    or a lone byte) is refused as any other bad signature, never an internal error."""
    client, package = beats
    path = _local(package["tracks"][0]["stream_url"])
    for forged in ("%C3%A9", "%E2%82%AC", "%FF"):
        res = client.get(path.replace("st=", f"st={forged}"))
        assert res.status_code == 403 and res.get_json()["code"] == "forbidden", forged


def test_artwork_is_public_and_missing_files_are_404(beats):
    client, package = beats
    assert package["image_url"] == "http://127.0.0.1:18100/dev-media/art/beats.svg"
    art = client.get("/dev-media/art/beats.svg")
    assert art.status_code == 200 and art.headers["Content-Type"].startswith("image/svg+xml")
    assert b"<script" not in art.data
    assert client.get("/dev-media/art/nothing.svg").status_code == 404
    assert client.get("/dev-media/../instance/art/beats.svg").status_code == 404


def test_never_served_with_a_media_server_or_in_production(app, make_config):
    rules = {rule.rule.split("/")[1] for rule in app.url_map.iter_rules()}
    assert "dev-media" not in rules  # MEDIA_BASE_URL set: files come from there
    production = create_app(make_config(
        SONICUS_ENV="production", MEDIA_BASE_URL=None, MEDIA_URL_SECRET=None,
        BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_live_x", SECRET_KEY="s" * 40,
        STRIPE_PRICE_IDS=["premium=price_a", "pro=price_b"],
        PUBLIC_BASE_URL="https://api.sonicus.example", VAPID_SUBJECT="mailto:ops@example.com",
        VAPID_PRIVATE_KEY="4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4"))
    assert "dev-media" not in {r.rule.split("/")[1] for r in production.url_map.iter_rules()}
    assert production.test_client().get("/dev-media/art/beats.svg").status_code == 404


@pytest.mark.parametrize("header", [
    "bytes=abc", "bytes=5-2", "bytes=", "bytes", "bytes=-", "bytes=0-0x", "bytes=--3",
    "bytes=0-1,4-5", "bytes=0-1,100000000-", "items=0-3", "seconds=0-3",
])
def test_a_range_the_server_may_ignore_answers_the_whole_file(beats, header):
    """RFC 9110, 14.2: a range unit other than bytes MUST be ignored, an invalid
    ranges-specifier or several ranges MAY be: the whole file, 200, not 416."""
    client, package = beats
    path = _local(package["tracks"][0]["stream_url"])
    whole = client.get(path).data
    res = client.get(path, headers={"Range": header})
    assert res.status_code == 200, (header, res.get_json())
    assert res.data == whole and "Content-Range" not in res.headers
    assert res.headers["Accept-Ranges"] == "bytes"


def test_byte_ranges_by_rfc_9110(beats):
    """A suffix longer than the file is the whole file (206); a last position past the end is
    cut there; empty list elements are skipped; a 0-byte suffix or a first position past the
    end is 416; a position of thousands of digits is past the end, not a 500."""
    client, package = beats
    path = _local(package["tracks"][0]["stream_url"])
    whole = client.get(path).data
    size = len(whole)
    longer = client.get(path, headers={"Range": f"bytes=-{size + 100}"})
    assert longer.status_code == 206 and longer.data == whole
    assert longer.headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    cut = client.get(path, headers={"Range": f"bytes={size - 5}-{size + 10 ** 30}"})
    assert cut.status_code == 206 and cut.data == whole[-5:]
    listed = client.get(path, headers={"Range": "Bytes= 4-7 ,"})
    assert listed.status_code == 206 and listed.data == whole[4:8]
    for header in ("bytes=-0", f"bytes={size}-", f"bytes={'9' * 5000}-"):
        res = client.get(path, headers={"Range": header})
        assert res.status_code == 416, header
        assert res.headers["Content-Range"] == f"bytes */{size}"
        assert res.get_json()["code"] == "range_not_satisfiable"


def test_an_empty_file_ignores_a_range(beats, dev_app):
    """Nothing of an empty file can be sent as a part: ``bytes=0-`` answers it whole (200)."""
    from sonicus import media

    client, _ = beats
    (media.media_root(dev_app) / "art" / "empty.svg").write_bytes(b"")
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        res = client.get("/dev-media/art/empty.svg", headers={"Range": header})
        assert res.status_code == 200 and res.data == b"", header
