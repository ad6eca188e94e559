package kms

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkDecodeListResponse decodes one full page of 1000 schema-shaped resources.
func BenchmarkDecodeListResponse(b *testing.B) {
	res := make([]string, 1000)
	for i := range res {
		res[i] = fmt.Sprintf(`{"resource_id":"key-%05d","resource_name":"gen-%d","resource_detail":{"key_id":"key-%05d",`+
			`"domain_id":"6f1e2d3c4b5a49687766554433221100","key_alias":"gen-%d","realm":"r","key_spec":"AES_256",`+
			`"key_usage":"ENCRYPT_DECRYPT","key_description":"generated key","creation_date":"1704067200",`+
			`"scheduled_deletion_date":"","key_state":"2","default_key_flag":"0","key_type":"1","expiration_time":"",`+
			`"origin":"kms","key_rotation_enabled":"false","sys_enterprise_project_id":"0"},`+
			`"tags":[{"key":"env","value":"prod"}]}`, i, i, i, i)
	}
	data := []byte(`{"resources":[` + strings.Join(res, ",") + `],"total_count":1000}`)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := DecodeListResponse(data); err != nil {
			b.Fatal(err)
		}
	}
}
