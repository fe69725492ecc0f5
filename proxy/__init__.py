"""medusa-crypt-proxy: an encrypting S3 proxy for Cassandra Medusa."""

__version__ = "0.1.0"
