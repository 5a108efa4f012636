"""A tiny RTSP server for tests: serves one H.264 clip (MP4, MPEG-TS or Matroska) on 127.0.0.1.

Run it with the system Python, which has the GStreamer bindings (python3-gi, gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/helpers/rtsp_server.py CLIP --port 8554 [--mount /cam] [--loop]

Every client gets its own pipeline that starts at the beginning of the clip and is paced in real
time by the RTSP server's sink clock. With ``--loop`` (MPEG-TS clips only) the clip is played again
and again, decoded and re-encoded so that the timestamps keep running.
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


def launch_line(clip, loop):
    """The GStreamer launch line of the media: file -> demux -> parse -> RTP payloader."""
    suffix = clip[clip.rfind("."):].lower()
    demux = DEMUXERS.get(suffix)
    if demux is None:
        raise SystemExit(f"unsupported clip type {suffix!r}; use one of {sorted(DEMUXERS)}")
    location = GLib.strescape(clip)
    if loop:
        # Decode and re-encode so a restart of the file becomes a clean continuation of the stream:
        # the timestamps are made by the encoder's input side, not taken from the (repeating) file.
        return (
            f'( multifilesrc location="{location}" loop=true ! {demux} ! h264parse ! avdec_h264 '
            "! videorate ! identity sync=true single-segment=true "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
    return (
        f'( filesrc location="{location}" ! {demux} ! h264parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--loop", action="store_true")
    args = parser.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.clip, args.loop))
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
