-- Accounts, the certificates they log in with, the CRL, and the keys of the earlier systems.

-- Who may log in. Every account logs in with a certificate and a password (等保 2.0: two factors, one of them
-- cryptographic). A unit operator's account is created when its key is made or activated; staff accounts by an
-- admin.
create table accounts (
    account_id       uuid primary key,
    username         text        not null unique,
    display_name     text        not null,
    role             text        not null check (role in ('unit_operator', 'agency_reviewer', 'ca_operator',
                                                          'province_admin', 'security_admin', 'audit_admin')),
    -- A unit operator's unit; an agency reviewer's agency. Nothing else may carry either.
    institution_code text references registry_entries (institution_code),
    agency_code      text references agencies (code),
    -- argon2id, PHC string format.
    password_hash    text        not null,
    created_at       timestamptz not null default now(),
    created_by       text        not null,
    -- Null until the first login, which creates the unit's draft record (an event to the units service).
    first_login_at   timestamptz,
    last_login_at    timestamptz,
    check ((role = 'unit_operator') = (institution_code is not null)),
    check ((role = 'agency_reviewer') = (agency_code is not null))
);

-- Certificates the platform's CA issued, and legacy certificates once activated. The private key is never here.
create table certificates (
    -- Upper-case hex, as the CRL and the pages show it.
    serial            text primary key,
    -- SHA-256 of the DER: how a presented certificate is found.
    fingerprint       bytea       not null unique,
    account_id        uuid        not null references accounts (account_id),
    application_id    text references key_applications (application_id),
    origin            text        not null check (origin in ('issued', 'legacy')),
    subject           text        not null,
    not_before        timestamptz not null,
    not_after         timestamptz not null,
    pem               text        not null,
    -- active → revoked; active → superseded (renewed). Both end up on the CRL.
    state             text        not null default 'active' check (state in ('active', 'revoked', 'superseded')),
    revoked_at        timestamptz,
    revocation_reason text,
    issued_at         timestamptz not null default now(),
    issued_by         text        not null,
    check ((state = 'active') = (revoked_at is null))
);

create index certificates_account on certificates (account_id, issued_at desc);
create index certificates_revoked on certificates (revoked_at) where state <> 'active';

-- Every CRL the CA signed; the newest is the one published. Its number is the CRL number (RFC 5280 5.2.3).
create table crls (
    number      bigint primary key,
    der         bytea       not null,
    this_update timestamptz not null,
    next_update timestamptz not null
);

-- The root certificates of the earlier systems' CAs: their certificates still log in, after activation.
create table legacy_roots (
    fingerprint bytea primary key,
    subject     text        not null,
    pem         text        not null,
    loaded_at   timestamptz not null default now(),
    loaded_by   text        not null
);

-- The keys of the earlier wage and pension-estimate systems (manual pp. 15, 45): known → activated → revoked.
create table legacy_keys (
    -- The certificate's serial, upper-case hex.
    serial           text primary key,
    username         text        not null unique,
    -- As the earlier system had it, argon2 PHC; the password stays the one the unit knows.
    password_hash    text        not null,
    -- The unit the earlier system knew the key for, when its list said.
    institution_code text,
    state            text        not null default 'known' check (state in ('known', 'activated', 'revoked')),
    account_id       uuid references accounts (account_id),
    activated_at     timestamptz,
    loaded_at        timestamptz not null default now()
);
