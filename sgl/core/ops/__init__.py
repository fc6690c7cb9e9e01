"""Op contracts and their torch-native reference implementations."""
