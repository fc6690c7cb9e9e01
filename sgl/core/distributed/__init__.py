"""Process groups and the Communicator contract (torch.distributed underneath)."""
