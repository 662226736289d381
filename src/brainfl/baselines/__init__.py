"""What a federation is compared with: centralized training, each site alone, and the sites pooled."""
