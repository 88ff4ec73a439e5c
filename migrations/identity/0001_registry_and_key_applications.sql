-- The establishment registry (编制通), the handling agencies, and key applications (密钥申请).

-- 经办机构: the pension agencies of the cities and counties; every registry unit is handled by one.
create table agencies (
    code        text primary key,
    name        text        not null unique,
    -- GB/T 2260 code of the city or county the agency serves.
    region_code char(6)     not null,
    updated_at  timestamptz not null default now()
);

-- 编制通: the units that may take part, as the establishment office keeps them. Loaded by the province admin.
create table registry_entries (
    -- 机构编码, the registry's own key for the unit.
    institution_code     text primary key,
    unit_name            text        not null,
    -- unit_name folded to half-width with white space removed: what 校验 compares.
    normalized_name      text        not null,
    credit_code          char(18)    not null,
    -- The registry's detailed type (机关, 参照公务员法管理单位, 公益一类事业单位, …).
    unit_type            text        not null,
    region_code          char(6)     not null,
    agency_code          text        not null references agencies (code),
    administrative_posts integer check (administrative_posts >= 0),
    institutional_posts  integer check (institutional_posts >= 0),
    logistics_posts      integer check (logistics_posts >= 0),
    updated_at           timestamptz not null default now()
);

-- A name identifies one unit: 校验 must never have to choose between two entries.
create unique index registry_entries_normalized_name on registry_entries (normalized_name);
create unique index registry_entries_credit_code on registry_entries (credit_code);

-- Application ids read SQ<yyyymmdd><number>; the number comes from here.
create sequence key_application_number;

-- 密钥申请. The applicant's ID number is never stored in clear: a keyed HMAC answers "is this the same number?"
-- (withdrawal and password change need it) and a masked copy is what pages show.
create table key_applications (
    application_id             text primary key,
    username                   text        not null unique,
    category                   text        not null,
    institution_code           text        not null references registry_entries (institution_code),
    applicant_name             text        not null,
    applicant_id_hmac          bytea       not null,
    applicant_id_number_masked text        not null,
    phone                      text        not null,
    -- argon2id, PHC string format.
    password_hash              text        not null,
    -- applied (新申请) → made (已制作) → revoked; applied → withdrawn.
    state                      text        not null check (state in ('applied', 'made', 'withdrawn', 'revoked')),
    applied_at                 timestamptz not null default now(),
    made_at                    timestamptz,
    updated_at                 timestamptz not null default now()
);

create index key_applications_institution on key_applications (institution_code, applied_at desc);
