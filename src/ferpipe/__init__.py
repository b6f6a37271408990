"""Facial-expression recognition pipeline (Li & Lima 2021 reproduction)."""
