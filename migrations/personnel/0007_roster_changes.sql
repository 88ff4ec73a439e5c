-- Life after approval. A unit whose first declaration was approved is enrolled: its people change only through
-- change declarations. Its open changes wait in roster_changes until a change declaration holding them is approved,
-- then they are applied in one transaction.

-- Enrolled units: the declaration that approved the roster. Direct saves, edits and deletes are refused from then
-- on; SaveRosterChange takes over.
create table enrolled_units (
    institution_code text primary key,
    declaration_id   uuid        not null,
    enrolled_at      timestamptz not null default now()
);

alter table enrolled_units enable row level security;
alter table enrolled_units force row level security;
create policy enrolled_units_within_scope on enrolled_units
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));

-- A 增员 is a person row from its first save, as any saved person is, so it holds the person's one registration
-- (persons_one_active_registration) while it waits: nobody else can register the person meanwhile. It is on the
-- approved roster only once its change declaration is approved.
alter table persons add column pending_add boolean not null default false;
-- The day a person left the unit by an approved 减员 (ended_at is when the registration ended).
alter table persons add column left_on date;

create table roster_changes (
    change_id        uuid primary key,
    institution_code text        not null,
    person_id        uuid        not null,
    action           text        not null check (action in ('add', 'remove', 'update')),
    -- The person's kind before and after (a retirement moves staff to a retiree kind).
    kind             text        not null,
    new_kind         text        not null,
    name             text        not null,
    id_number_masked text        not null,
    leave_date       date,
    leave_reason     text,
    -- 变更 and retirement: the checked values to write on approval (check::Values as JSON), sealed because they
    -- hold the ID number and the payment account.
    values_sealed    bytea,
    key_version      integer,
    -- [{field, label, before, after}], sensitive values masked: what a reviewer and the printed form show.
    fields           jsonb       not null default '[]',
    -- The check the save ran: {errors: [], warnings: [{field, code, message}]}.
    findings         jsonb       not null default '{}',
    accepted_warnings jsonb      not null default '[]',
    created_at       timestamptz not null default now(),
    created_by       text        not null,
    updated_at       timestamptz not null default now(),
    updated_by       text        not null,
    -- Set once an approved change declaration applied it.
    applied_at       timestamptz,
    declaration_id   uuid
);

-- One open change per person: a second save for the same person replaces the first.
create unique index roster_changes_one_open on roster_changes (person_id) where applied_at is null;
create index roster_changes_of_unit on roster_changes (institution_code, created_at) where applied_at is null;

alter table roster_changes enable row level security;
alter table roster_changes force row level security;
create policy roster_changes_within_scope on roster_changes
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));

-- A snapshot is of the whole roster (a unit's first declaration) or of a change declaration's changes.
alter table roster_snapshots add column kind text not null default 'roster' check (kind in ('roster', 'changes'));
alter table roster_snapshots add column add_count    integer not null default 0;
alter table roster_snapshots add column remove_count integer not null default 0;
alter table roster_snapshots add column update_count integer not null default 0;

-- Approved declarations that took effect here, so that applying one is done once however often it is asked.
create table applied_declarations (
    declaration_id   uuid primary key,
    institution_code text        not null,
    applied_at       timestamptz not null default now(),
    applied_by       text        not null
);

alter table applied_declarations enable row level security;
alter table applied_declarations force row level security;
create policy applied_declarations_within_scope on applied_declarations
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));

-- The history names the declaration that caused an entry, and knows approvals, corrections and retirements.
alter table person_history add column declaration_id uuid;
alter table person_history drop constraint person_history_event_check;
alter table person_history add constraint person_history_event_check
    check (event in ('registered', 'approved', 'changed', 'retired', 'ended'));

-- Why a person leaves (减员).
insert into code_lists (list, code, label, sort) values
    ('leave_reason', 'transfer', '调出', 1), ('leave_reason', 'retirement', '退休', 2),
    ('leave_reason', 'death', '死亡', 3), ('leave_reason', 'dismissal', '辞退或解除聘用', 4);
