-- The declarations printing knows of, from units' declaration events: what the forms print and verify against.
create table printed_declarations (
    declaration_id   uuid primary key,
    institution_code text        not null,
    agency_code      text        not null,
    unit_name        text        not null,
    state            text        not null,
    unit_digest      text        not null,
    roster_digest    text        not null,
    declared_at      timestamptz not null,
    rendered_at      timestamptz,
    updated_at       timestamptz not null default now()
);

create index printed_declarations_of_unit on printed_declarations (institution_code, declared_at);

-- The rendered forms: a declaration's each kind once. The PDF is sealed (kit::sealing: it holds ID numbers) with its
-- key version; its SHA-256 is of the PDF itself.
create table documents (
    document_id    uuid primary key,
    declaration_id uuid        not null references printed_declarations,
    kind           text        not null
                   check (kind in ('unit_form', 'staff_roster', 'retiree_pre_reform_roster', 'retiree_post_reform_roster', 'bundle')),
    title          text        not null,
    pages          integer     not null,
    size           bigint      not null,
    sha256         text        not null,
    content_sealed bytea       not null,
    key_version    integer     not null,
    rendered_at    timestamptz not null default now(),
    unique (declaration_id, kind)
);

-- Row-level security as in the other services: a unit's transactions see its declarations, a reviewer's its
-- agency's; verification and rendering are the platform's own work (scope all).
alter table printed_declarations enable row level security;
alter table printed_declarations force row level security;
create policy printed_declarations_within_scope on printed_declarations
    using (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(institution_code));

alter table documents enable row level security;
alter table documents force row level security;
create policy documents_within_scope on documents
    using (exists (select 1 from printed_declarations d where d.declaration_id = documents.declaration_id))
    with check (exists (select 1 from printed_declarations d where d.declaration_id = documents.declaration_id));
