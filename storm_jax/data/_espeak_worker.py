"""eSpeak NG synthesis worker (run as a plain script, never imported by the package).

Why a separate process: libespeak-ng keeps synthesis state in C static variables (pitch flutter
index, wave phase, AGC, …) that carry over from one utterance to the next and that no API call
resets, so the same text gives different samples depending on what was spoken before. Speaking
every utterance in a freshly forked child that loads the library anew makes each one a pure
function of its request (text, voice, rate, pitch, range, word gap, seed). The worker itself
never loads the library, so every child starts from the library's initial state.

Protocol (binary, on stdin/stdout): each request is one line of JSON with keys
``lib``, ``data``, ``text``, ``voice``, ``rate``, ``pitch``, ``range``, ``wordgap``, ``seed``.
Each reply is ``b"OK"`` + little-endian int32 sample rate + int32 sample count + int16 samples,
or ``b"ER"`` + int32 length + UTF-8 message. Without ``os.fork`` (Windows) the worker answers
one request and exits; the caller then starts a new worker for the next one.

This file imports only the standard library (no numpy, no jax): it is started with
``python <path-to-this-file>`` so that it stays small and single-threaded, which makes ``fork``
safe.
"""

import ctypes
import json
import os
import struct
import sys

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMS = {"rate": 1, "pitch": 3, "range": 4, "wordgap": 7}


def _synthesize(req):
    """Speak one request with a freshly loaded library; returns (rate, int16 bytes)."""
    lib = ctypes.CDLL(req["lib"], mode=getattr(ctypes, "RTLD_LOCAL", 0))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, req["data"].encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data path {req['data']}")
    chunks = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def _collect(wav, n, _events):
        if n > 0 and wav:
            chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    callback = callback_type(_collect)
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    status = lib.espeak_SetVoiceByName(req["voice"].encode())
    if status != 0:
        raise RuntimeError(f"unknown eSpeak NG voice {req['voice']!r} (status {status})")
    for key, param in _PARAMS.items():
        if req.get(key) is not None:
            lib.espeak_SetParameter(param, int(req[key]), 0)
    # eSpeak seeds its own generator with time(NULL) at initialisation; some voices draw from it.
    lib.espeak_ng_SetRandSeed(ctypes.c_long(int(req.get("seed", 0))))
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(int(req.get("seed", 0))))
    except (OSError, AttributeError):
        pass
    text = req["text"].encode("utf-8") + b"\0"
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed (status {status})")
    lib.espeak_Synchronize()
    lib.espeak_Terminate()
    return rate, b"".join(chunks)


def _reply(out, req):
    try:
        rate, pcm = _synthesize(req)
        out.write(b"OK" + struct.pack("<ii", rate, len(pcm) // 2) + pcm)
    except Exception as err:  # reported to the parent, which raises it with context
        msg = f"{type(err).__name__}: {err}".encode("utf-8")
        out.write(b"ER" + struct.pack("<i", len(msg)) + msg)
    out.flush()


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        req = json.loads(line)
        if not hasattr(os, "fork"):
            _reply(out, req)
            return
        out.flush()
        pid = os.fork()
        if pid == 0:  # child: fresh library state, answer, and leave without cleanup handlers
            code = 0
            try:
                _reply(out, req)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            msg = f"synthesis child exited abnormally (wait status {status})".encode()
            out.write(b"ER" + struct.pack("<i", len(msg)) + msg)
            out.flush()


if __name__ == "__main__":
    main()
