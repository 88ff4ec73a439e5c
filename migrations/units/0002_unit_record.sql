-- The unit record's own fields (参保单位确认信息, domain section 2), and its code lists as versioned data.

create table code_lists (
    list       text not null,
    code       text not null,
    label      text not null,
    valid_from date not null default date '1900-01-01',
    valid_to   date,
    sort       integer not null default 0,
    primary key (list, code, valid_from)
);

insert into code_lists (list, code, label, sort) values
    ('unit_type', '10', '机关', 1), ('unit_type', '20', '参照公务员法管理单位', 2),
    ('unit_type', '31', '公益一类事业单位', 3), ('unit_type', '32', '公益二类事业单位', 4),
    ('unit_type', '33', '生产经营类事业单位（暂参加）', 5), ('unit_type', '90', '其他', 9),
    ('subordination', '10', '中央', 1), ('subordination', '20', '省', 2), ('subordination', '30', '计划单列市', 3),
    ('subordination', '40', '市', 4), ('subordination', '50', '县', 5), ('subordination', '60', '乡镇', 6),
    ('subordination', '70', '部队', 7), ('subordination', '90', '其他', 9),
    ('funding_source', '1', '全额拨款', 1), ('funding_source', '2', '差额拨款', 2), ('funding_source', '3', '自收自支', 3);

alter table units
    add column unit_type_code                       text,
    add column org_code                             text,
    add column subordination                        text,
    add column funding_source                       text,
    add column legal_representative                 text,
    -- The legal representative's ID number is sealed (kit::sealing) with its key version; a masked copy is shown.
    add column legal_representative_id_sealed       bytea,
    add column legal_representative_id_masked       text,
    add column key_version                          integer,
    add column address                              text,
    add column post_code                            text,
    add column contact_name                         text,
    add column contact_phone                        text,
    add column email                                text,
    add column clerk_name                           text,
    add column clerk_phone                          text,
    add column bank_name                            text,
    add column bank_account_name                    text,
    add column bank_account                         text,
    add column administrative_posts                 integer check (administrative_posts >= 0),
    add column institutional_posts                  integer check (institutional_posts >= 0),
    add column logistics_posts                      integer check (logistics_posts >= 0),
    -- [{code, accepted_by, accepted_at}]
    add column accepted_warnings                    jsonb not null default '[]',
    add column updated_at                           timestamptz,
    add column updated_by                           text;
