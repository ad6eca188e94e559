package kmstest

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// Shape selects how resources are encoded; see the package comment.
type Shape int32

const (
	// ShapeSchema follows the API schema: strings everywhere, dates in epoch seconds,
	// resource_detail an object.
	ShapeSchema Shape = iota
	// ShapeExample follows the vendor's response example: numbers and a boolean, dates in epoch
	// milliseconds, resource_detail an array of one object.
	ShapeExample
	shapeCount
)

// String returns "schema" or "example".
func (s Shape) String() string {
	switch s {
	case ShapeSchema:
		return "schema"
	case ShapeExample:
		return "example"
	default:
		return fmt.Sprintf("Shape(%d)", int32(s))
	}
}

// ParseShape parses "schema" or "example" (case-insensitive).
func ParseShape(s string) (Shape, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "schema":
		return ShapeSchema, nil
	case "example":
		return ShapeExample, nil
	default:
		return 0, fmt.Errorf("unknown shape %q: want schema or example", s)
	}
}

func (s Shape) valid() bool { return s >= 0 && s < shapeCount }

type tagItem struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type resource struct {
	ResourceID     string    `json:"resource_id"`
	ResourceDetail any       `json:"resource_detail"`
	ResourceName   string    `json:"resource_name"`
	Tags           []tagItem `json:"tags"`
}

type schemaDetail struct {
	KeyID                  string `json:"key_id"`
	DomainID               string `json:"domain_id"`
	KeyAlias               string `json:"key_alias"`
	Realm                  string `json:"realm"`
	KeySpec                string `json:"key_spec"`
	KeyUsage               string `json:"key_usage"`
	KeyDescription         string `json:"key_description"`
	CreationDate           string `json:"creation_date"`
	ScheduledDeletionDate  string `json:"scheduled_deletion_date"`
	KeyState               string `json:"key_state"`
	DefaultKeyFlag         string `json:"default_key_flag"`
	KeyType                string `json:"key_type"`
	ExpirationTime         string `json:"expiration_time"`
	Origin                 string `json:"origin"`
	KeyRotationEnabled     string `json:"key_rotation_enabled"`
	SysEnterpriseProjectID string `json:"sys_enterprise_project_id"`
}

type exampleDetail struct {
	KeyID                  string `json:"key_id"`
	DomainID               string `json:"domain_id"`
	KeyAlias               string `json:"key_alias"`
	KeySpec                string `json:"key_spec"`
	KeyUsage               string `json:"key_usage"`
	KeyDescription         string `json:"key_description"`
	CreationDate           any    `json:"creation_date"`
	ScheduledDeletionDate  any    `json:"scheduled_deletion_date"`
	KeyState               int    `json:"key_state"`
	DefaultKeyFlag         int    `json:"default_key_flag"`
	KeyType                any    `json:"key_type"`
	KeyRotationEnabled     bool   `json:"key_rotation_enabled"`
	ExpirationTime         any    `json:"expiration_time"`
	Origin                 string `json:"origin"`
	SysEnterpriseProjectID string `json:"sys_enterprise_project_id"`
	Realm                  string `json:"realm"`
}

// renderResource encodes one key as an ActionResources object.
func renderResource(k *Key, s Shape) []byte {
	res := resource{ResourceID: k.ID, ResourceName: k.Alias, Tags: tagItems(k.Tags)}
	if s == ShapeExample {
		res.ResourceDetail = []exampleDetail{exampleOf(k)}
	} else {
		res.ResourceDetail = schemaOf(k)
	}
	return wire.Marshal(res)
}

func schemaOf(k *Key) schemaDetail {
	return schemaDetail{
		KeyID:                  k.ID,
		DomainID:               k.DomainID,
		KeyAlias:               k.Alias,
		Realm:                  k.Realm,
		KeySpec:                k.Spec,
		KeyUsage:               k.Usage,
		KeyDescription:         k.Description,
		CreationDate:           epochSeconds(k.CreationDate),
		ScheduledDeletionDate:  epochSeconds(k.ScheduledDeletionDate),
		KeyState:               strconv.Itoa(int(k.State)),
		DefaultKeyFlag:         flag(k.Default),
		KeyType:                k.Type,
		ExpirationTime:         epochSeconds(k.ExpirationTime),
		Origin:                 k.Origin,
		KeyRotationEnabled:     strconv.FormatBool(k.RotationEnabled),
		SysEnterpriseProjectID: k.EnterpriseProjectID,
	}
}

func exampleOf(k *Key) exampleDetail {
	d := exampleDetail{
		KeyID:                  k.ID,
		DomainID:               k.DomainID,
		KeyAlias:               k.Alias,
		KeySpec:                k.Spec,
		KeyUsage:               k.Usage,
		KeyDescription:         k.Description,
		CreationDate:           epochMillis(k.CreationDate),
		ScheduledDeletionDate:  epochMillis(k.ScheduledDeletionDate),
		KeyState:               int(k.State),
		KeyType:                k.Type,
		KeyRotationEnabled:     k.RotationEnabled,
		ExpirationTime:         epochMillis(k.ExpirationTime),
		Origin:                 k.Origin,
		SysEnterpriseProjectID: k.EnterpriseProjectID,
		Realm:                  k.Realm,
	}
	if k.Default {
		d.DefaultKeyFlag = 1
	}
	if n, err := strconv.Atoi(k.Type); err == nil {
		d.KeyType = n
	}
	return d
}

func tagItems(tags map[string]string) []tagItem {
	items := make([]tagItem, 0, len(tags))
	for k, v := range tags {
		items = append(items, tagItem{Key: k, Value: v})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Key < items[j].Key })
	return items
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// epochSeconds is the schema's date: epoch seconds as a string, "" when t is zero.
func epochSeconds(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.Unix(), 10)
}

// epochMillis is the example's date: epoch milliseconds as a number, "" when t is zero.
func epochMillis(t time.Time) any {
	if t.IsZero() {
		return ""
	}
	return t.UnixMilli()
}

// renderPage encodes a filter answer.
func renderPage(records []*record, total int, s Shape) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"resources":[`)
	for i, r := range records {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(r.encoded(s))
	}
	buf.WriteString(`],"total_count":`)
	buf.WriteString(strconv.Itoa(total))
	buf.WriteByte('}')
	return buf.Bytes()
}

// renderCount encodes a count answer.
func renderCount(total int) []byte {
	return []byte(`{"total_count":` + strconv.Itoa(total) + `}`)
}
