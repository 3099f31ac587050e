"""ishowtts-edge: a managed F5-TTS text-to-speech appliance for NVIDIA Jetson AGX Orin."""

__version__ = "0.1.0"
