"""event"""
