"""Celestial Nexus AI API: answers WeChat users from a knowledge base or an LLM."""
