"""Colab transformer training kit: config, data, training core, wizard and helpers."""
