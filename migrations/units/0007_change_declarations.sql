-- Change declarations (人员变更申报): after a unit's first declaration is approved, its roster changes only through
-- declarations that hold what changed (增员, 减员, 变更). They follow the same states as the first one, one active
-- declaration per unit of either kind (declarations_one_active); the unit itself stays approved throughout.
alter table declarations add column kind text not null default 'initial' check (kind in ('initial', 'change'));
alter table declarations add column add_count    integer not null default 0;
alter table declarations add column remove_count integer not null default 0;
alter table declarations add column update_count integer not null default 0;
