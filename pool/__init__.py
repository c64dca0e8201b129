"""phoenix-pool: a supervised process pool of Phoenix Channels connections."""
