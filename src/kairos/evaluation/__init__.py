"""Evaluation: metrics, protocols (leave-one-out, temporal, replay, push), reports."""
