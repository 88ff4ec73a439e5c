-- Insured units (参保单位). A unit's record starts as a draft (录入中) when its operator first logs in, filled from
-- the registry entry that identity sends with the event; the unit completes it and declares.
create table units (
    -- 机构编码: the registry's key, and the unit's key here.
    institution_code text primary key,
    unit_name        text        not null,
    credit_code      text        not null,
    unit_type        text        not null,
    region_code      text        not null,
    agency_code      text        not null,
    -- draft (录入中) → declared → under_review → approved; rejected back to draft.
    state            text        not null default 'draft'
                     check (state in ('draft', 'declaring', 'declared', 'under_review', 'approved')),
    created_at       timestamptz not null default now(),
    -- The identity event the record came from.
    created_by_event text        not null
);

create index units_agency on units (agency_code, state);
