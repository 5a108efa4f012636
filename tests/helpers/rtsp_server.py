"""A tiny RTSP server for tests: serves one H.264 or H.265 clip (MP4, MPEG-TS or Matroska) on 127.0.0.1,
optionally with an audio track as cameras send it (AAC, G.711 A-law or mu-law, Opus).

Run it with the system Python, which has the GStreamer bindings (python3-gi, gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/helpers/rtsp_server.py CLIP --port 8554 [--mount /cam] [--loop]
        [--video h264|h265] [--audio aac|pcma|pcmu|opus --audio-seconds S]

Every client gets its own pipeline that starts at the beginning of the clip and is paced in real
time by the RTSP server's sink clock. With ``--loop`` (MPEG-TS H.264 clips only) the clip is played again
and again, decoded and re-encoded so that the timestamps keep running. The audio track is a 440 Hz tone
encoded by GStreamer for ``--audio-seconds`` (the clip's length), timed from zero like the video.
It stops on SIGTERM/SIGINT.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".ts": "tsdemux", ".mkv": "matroskademux"}
VIDEO = {"h264": "h264parse config-interval=-1 ! rtph264pay",
         "h265": "h265parse config-interval=-1 ! rtph265pay"}
# audio name -> (sample rate, samples per buffer, encoder ! payloader)
AUDIO = {
    "aac": (16000, 1024, "voaacenc bitrate=32000 ! aacparse ! rtpmp4gpay"),
    "pcma": (8000, 160, "alawenc ! rtppcmapay"),
    "pcmu": (8000, 160, "mulawenc ! rtppcmupay"),
    "opus": (48000, 960, "opusenc ! rtpopuspay"),
}


def audio_branch(audio, seconds):
    """The launch line of the audio track: a tone, encoded, then the RTP payloader ``pay1``."""
    rate, per_buffer, encode = AUDIO[audio]
    buffers = max(1, round(seconds * rate / per_buffer))
    return (f" audiotestsrc wave=sine freq=440 volume=0.3 num-buffers={buffers} "
            f"samplesperbuffer={per_buffer} ! audio/x-raw,rate={rate},channels=1 ! audioconvert "
            f"! {encode} name=pay1 pt=97")


def launch_line(clip, loop, video="h264", audio=None, audio_seconds=0.0):
    """The GStreamer launch line of the media: file -> demux -> parse -> RTP payloader (+ an audio track)."""
    audio_part = audio_branch(audio, audio_seconds) if audio else ""
    suffix = clip[clip.rfind("."):].lower()
    demux = DEMUXERS.get(suffix)
    if demux is None:
        raise SystemExit(f"unsupported clip type {suffix!r}; use one of {sorted(DEMUXERS)}")
    location = GLib.strescape(clip)
    if loop:
        # Decode and re-encode so a restart of the file becomes a clean continuation of the stream:
        # the timestamps are made by the encoder's input side, not taken from the (repeating) file.
        if video != "h264" or audio:
            raise SystemExit("--loop serves H.264 without audio only")
        return (
            f'( multifilesrc location="{location}" loop=true ! {demux} ! h264parse ! avdec_h264 '
            "! videorate ! identity sync=true single-segment=true "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
    return (
        f'( filesrc location="{location}" ! {demux} ! {VIDEO[video]} name=pay0 pt=96 config-interval=-1'
        f"{audio_part} )"
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--video", choices=sorted(VIDEO), default="h264")
    parser.add_argument("--audio", choices=sorted(AUDIO))
    parser.add_argument("--audio-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.clip, args.loop, args.video, args.audio, args.audio_seconds))
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{args.port}")

    main_loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, main_loop.quit)
    main_loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
