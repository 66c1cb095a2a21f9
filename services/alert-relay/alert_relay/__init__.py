"""Alertmanager webhook -> WeCom (企业微信) group robot: each notification as one message."""
