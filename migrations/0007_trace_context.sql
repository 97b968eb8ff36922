-- The W3C trace context of the submit that created a job (traceparent, tracestate), so its
-- dispatch, generation, uploads and completion join the submitter's trace.
ALTER TABLE jobs ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}';
