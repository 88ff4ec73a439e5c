-- Spreadsheet imports of people. The uploaded file is kept sealed in chunks (it holds ID numbers) until its job
-- ends; the job is carried by a JetStream work queue, so any replica works on it and a restart resumes it from the
-- rows not yet recorded. Each row's outcome commits with its person, so a worker killed mid-file loses and doubles
-- no row.
create table import_jobs (
    job_id           uuid primary key,
    institution_code text        not null,
    kind             text        not null check (kind in ('staff', 'retiree_pre_reform', 'retiree_post_reform')),
    mode             text        not null check (mode in ('valid_rows', 'all_or_nothing')),
    -- uploading → queued → running → done | failed.
    state            text        not null check (state in ('uploading', 'queued', 'running', 'done', 'failed')),
    file_name        text        not null default '',
    file_size        bigint      not null,
    file_sha256      text        not null,
    received         bigint      not null default 0,
    -- The warning codes the uploader accepts for every row of the file.
    accepted_warnings jsonb      not null default '[]',
    rows_total       integer,
    rows_done        integer     not null default 0,
    rows_saved       integer     not null default 0,
    rows_failed      integer     not null default 0,
    -- Why the whole file was refused (not a table, a missing column, …).
    error            text,
    error_code       text,
    created_by       text        not null,
    created_at       timestamptz not null default now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The worker holding the job and when it last said so: a job whose worker fell silent is taken over.
    worker           text,
    heartbeat_at     timestamptz
);

create index import_jobs_of_unit on import_jobs (institution_code, created_at);
create index import_jobs_waiting on import_jobs (queued_at) where state in ('queued', 'running');

create table import_chunks (
    job_id           uuid        not null references import_jobs on delete cascade,
    institution_code text        not null,
    seq              integer     not null,
    data_sealed      bytea       not null,
    key_version      integer     not null,
    primary key (job_id, seq)
);

-- One outcome per row of the file: saved (with its person), refused (errors, or warnings not accepted), or
-- already registered (the same person saved by an earlier upload of the file).
create table import_rows (
    job_id           uuid        not null references import_jobs on delete cascade,
    institution_code text        not null,
    row_number       integer     not null,
    outcome          text        not null check (outcome in ('saved', 'valid', 'refused', 'already_registered')),
    person_id        uuid,
    name             text        not null default '',
    -- What the population registry said when the row was checked (all_or_nothing saves with it later).
    population_status text,
    -- [{field, column, code, message, warning}]
    findings         jsonb       not null default '[]',
    primary key (job_id, row_number)
);

alter table import_jobs enable row level security;
alter table import_jobs force row level security;
create policy import_jobs_within_scope on import_jobs
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));
alter table import_chunks enable row level security;
alter table import_chunks force row level security;
create policy import_chunks_within_scope on import_chunks
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));
alter table import_rows enable row level security;
alter table import_rows force row level security;
create policy import_rows_within_scope on import_rows
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));

-- The unit's type, from identity's first-login event: an imported staff member's 人员身份 defaults by it.
alter table unit_agencies add column unit_type text not null default '';
