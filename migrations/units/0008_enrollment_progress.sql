-- The enrollment dashboards' projection: what identity's, this service's and personnel's events say about how far
-- each registry unit has come and how many people were saved when. Nothing here is written by a request: only the
-- progress consumers write it, from events, so `pension progress verify` can rebuild it from the streams and
-- compare. Each column is written by events of one stream only, so the result does not depend on how the three
-- streams interleave.

-- One row per unit that any event named. in_registry, region_code and agency_code come from the registry's
-- events; the journey's timestamps from the events that first reached each step.
create table progress_units (
    institution_code  text primary key,
    in_registry       boolean     not null default false,
    region_code       text        not null default '',
    agency_code       text        not null default '',
    key_applied_at    timestamptz,
    key_made_at       timestamptz,
    activated_at      timestamptz,
    record_filled_at  timestamptz,
    -- The state of the unit's first declaration (参保登记申报): '', declared, claimed, approved or rejected; a
    -- withdrawn declaration leaves ''.
    declaration_state text        not null default '',
    -- Where the unit stands: the furthest step of its journey, or its declaration's state.
    state             text generated always as (
        case
            when declaration_state = 'approved' then 'approved'
            when declaration_state = 'claimed' then 'under_review'
            when declaration_state = 'declared' then 'declared'
            when declaration_state = 'rejected' then 'rejected'
            when record_filled_at is not null then 'record_filled'
            when activated_at is not null then 'activated'
            when key_made_at is not null then 'key_made'
            when key_applied_at is not null then 'key_applied'
            else 'not_applied'
        end) stored
);
create index progress_units_by_agency on progress_units (agency_code) where in_registry;

-- People saved and deleted per hour, by the unit's agency and region.
create table progress_people (
    agency_code              text        not null,
    region_code              text        not null,
    hour                     timestamptz not null,
    staff                    bigint      not null default 0,
    retiree_pre_reform       bigint      not null default 0,
    retiree_post_reform      bigint      not null default 0,
    deleted                  bigint      not null default 0,
    primary key (agency_code, region_code, hour)
);
create index progress_people_by_hour on progress_people (hour);

-- Every declaration, first or change, with its latest state: the review queue's figures and the rejections.
create table progress_declarations (
    declaration_id    text primary key,
    institution_code  text        not null,
    agency_code       text        not null,
    kind              text        not null,
    state             text        not null,
    declared_at       timestamptz not null,
    decided_at        timestamptz,
    reason            text        not null default ''
);
create index progress_declarations_waiting on progress_declarations (agency_code, declared_at)
    where state in ('declared', 'claimed');

-- People saved per minute, province-wide: the live load.
create table progress_load (
    minute            timestamptz primary key,
    saved             bigint      not null default 0,
    imported          bigint      not null default 0
);

-- An agency reviewer's transaction sees its agency's rows only; the province admin's and the consumers' see all.
create function progress_scope_allows(agency_code text) returns boolean
language sql stable as $$
    select coalesce(current_setting('pension.scope', true), '') = 'all'
        or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ','))
$$;

alter table progress_units enable row level security;
alter table progress_units force row level security;
create policy progress_units_within_scope on progress_units using (progress_scope_allows(agency_code));
alter table progress_people enable row level security;
alter table progress_people force row level security;
create policy progress_people_within_scope on progress_people using (progress_scope_allows(agency_code));
alter table progress_declarations enable row level security;
alter table progress_declarations force row level security;
create policy progress_declarations_within_scope on progress_declarations
    using (progress_scope_allows(agency_code));
alter table progress_load enable row level security;
alter table progress_load force row level security;
create policy progress_load_within_scope on progress_load using (progress_scope_allows(null));
