-- A change declaration (人员变更申报) prints its 增减变动表 (and the bundle of it) instead of the unit form and the
-- rosters.
alter table documents drop constraint documents_kind_check;
alter table documents add constraint documents_kind_check
    check (kind in ('unit_form', 'staff_roster', 'retiree_pre_reform_roster', 'retiree_post_reform_roster',
                    'change_form', 'bundle'));
