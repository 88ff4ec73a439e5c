-- Declared rosters: when a unit declares, its people are frozen (roster_locks) and a snapshot of every person is
-- stored under the declaration id, never changed after. Printing and the review read the snapshot, never the live
-- roster.
create table roster_snapshots (
    declaration_id   uuid primary key,
    institution_code text        not null,
    -- A FrozenRoster's encoding, base64, sealed (kit::sealing): it holds ID numbers. The digest is the SHA-256 (hex)
    -- of the encoding, printed on the forms and checked by /verify.
    snapshot_sealed  bytea       not null,
    key_version      integer     not null,
    digest           text        not null,
    staff_count               integer not null,
    retiree_pre_reform_count  integer not null,
    retiree_post_reform_count integer not null,
    frozen_at        timestamptz not null default now(),
    frozen_by        text        not null
);

create index roster_snapshots_of_unit on roster_snapshots (institution_code, frozen_at);

create function roster_snapshots_unchangeable() returns trigger language plpgsql as $$
begin
    -- Only `pension keys rotate` may touch a snapshot: to seal the same content again under a new key.
    if tg_op = 'UPDATE' and new.digest = old.digest and new.declaration_id = old.declaration_id
        and new.institution_code = old.institution_code and new.frozen_at = old.frozen_at then
        return new;
    end if;
    raise exception 'roster snapshots are unchangeable';
end
$$;

create trigger roster_snapshots_unchangeable before update or delete on roster_snapshots
    for each row execute function roster_snapshots_unchangeable();

-- A reviewer reads the snapshots of its agency's units (unit_agencies comes from identity's first-login events).
alter table roster_snapshots enable row level security;
alter table roster_snapshots force row level security;
create policy roster_snapshots_within_scope on roster_snapshots
    using (kit_scope_allows(institution_code) or exists (
        select 1 from unit_agencies a where a.institution_code = roster_snapshots.institution_code
            and a.agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ','))))
    with check (kit_scope_allows(institution_code));
