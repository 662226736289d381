"""Tests of what a site sends back about a failure: the reason, never its file paths."""

from __future__ import annotations

from brainfl.client_app import redact_paths


def test_site_paths_are_reduced_to_their_last_component():
    message = "data folder not found: /srv/hospital-a/Training (expected /srv/hospital-a/Training/x)"
    redacted = redact_paths(message)
    assert redacted == "data folder not found: <site>/Training (expected <site>/x)"
    assert "hospital-a" not in redacted


def test_a_message_without_paths_is_unchanged():
    text = "setting 'model': unknown model 'resnet' (choose one of: cnn, vgg16)"
    assert redact_paths(text) == text
