"""Faithful fakes of the Jetson tools and sysfs, plus helpers to run the real hwctl.

Import as ``from fakes.board import FakeBoard`` (pytest puts tests/ on sys.path).
"""
