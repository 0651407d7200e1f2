"""Piper's own phonemes-to-ids, the reference for ferrite's: the piper-tts
package phonemizes each line of stdin with its bundled espeak-ng and prints
one JSON list of phoneme-id lists (one per sentence) per line.

Usage: python3 piper_ids.py VOICE.onnx < lines.txt
"""
import json
import sys

from piper import PiperVoice


def main():
    voice = PiperVoice.load(sys.argv[1])
    for line in sys.stdin:
        sentences = voice.phonemize(line.strip())
        print(json.dumps([voice.phonemes_to_ids(s) for s in sentences]))


if __name__ == "__main__":
    main()
