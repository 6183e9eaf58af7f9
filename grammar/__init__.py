"""Lark grammars; the compiler loads them as package data."""
