-- Bytes are stored once under their sha256 (`blobs/<sha256>`), in a folder or an S3 bucket;
-- a record names the object its bytes are in. Records from before keep a NULL blob_key:
-- their bytes stay at their human name (storage_key), where reads still find them.
ALTER TABLE files ADD COLUMN blob_key text;

CREATE INDEX files_blob_key ON files (blob_key) WHERE blob_key IS NOT NULL;
