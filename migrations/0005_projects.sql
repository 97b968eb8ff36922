-- Projects and their characters. A project's slug names its folder in the file layout;
-- it is unique per owner and never "unsorted" (the folder of files without a project).
CREATE TABLE projects (
    id             uuid PRIMARY KEY,
    owner_id       text        NOT NULL,
    name           text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 120),
    slug           text        NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$' AND slug <> 'unsorted'),
    description    text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    archived       boolean     NOT NULL DEFAULT false,
    -- Files of this project older than this many days are deleted; 0 keeps them.
    retention_days integer     NOT NULL DEFAULT 0 CHECK (retention_days BETWEEN 0 AND 36500),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_owner_slug UNIQUE (owner_id, slug)
);
CREATE INDEX projects_owner_created ON projects (owner_id, created_at DESC, id DESC);

CREATE TABLE characters (
    id                uuid PRIMARY KEY,
    project_id        uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name              text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 120),
    description       text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    prompt_fragment   text        NOT NULL DEFAULT '' CHECK (char_length(prompt_fragment) <= 1000),
    negative_fragment text        NOT NULL DEFAULT '' CHECK (char_length(negative_fragment) <= 1000),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT characters_project_name UNIQUE (project_id, name)
);

-- The characters a job was submitted with, and the negative prompt with their fragments
-- (the composed positive prompt is jobs.composed_prompt).
ALTER TABLE jobs ADD COLUMN character_ids uuid[] NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN composed_negative text NOT NULL DEFAULT '';
CREATE INDEX jobs_project_created ON jobs (project_id, created_at DESC, id DESC) WHERE project_id IS NOT NULL;
UPDATE jobs SET composed_negative = negative_prompt;
