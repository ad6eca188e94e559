// Package kmstest emulates Huawei Cloud KMS ListKmsByTags
// (POST /v1.0/{project_id}/kms/resource_instances/action) as described in the project's
// kms-api.md. It serves the client's tests, the operator's envtest tests, the demo and users.
//
// Use NewServer or NewTLSServer for an httptest-style server on 127.0.0.1, or New for a bare
// Emulator (an http.Handler) to mount elsewhere; hack/kms-emulator serves the same Emulator.
// All state (keys, credentials, faults, counters) lives in the Emulator and is safe for
// concurrent use.
//
// # Filter semantics
//
// As decided in kms-api.md: different tag keys are ANDed, the values of one key are ORed, an
// empty values list means "the key is present with any value". A match with key resource_name
// is a case-sensitive substring of the key alias; several matches are ANDed. Records are
// returned sorted by key id; offset is the index of the first record, limit the page size.
// The count action returns {"total_count": N} only and ignores limit and offset.
//
// # Validation and error codes
//
// Every error body is {"error":{"error_code":"KMS.XXXX","error_msg":"..."}} and the message
// names the offending field. The codes come from the list in kms-api.md:
//
//	404 KMS.0201  path is not /v1.0/{project_id}/kms/resource_instances/action
//	405 KMS.0201  method is not POST
//	400 KMS.0202  body is not a JSON object (syntax error, trailing data, array, ...)
//	400 KMS.0203  body longer than MaxBodyBytes
//	400 KMS.0204  missing: empty body, no "action", a tag without "key", a match without
//	              "key" or "value"
//	400 KMS.0206  invalid value: unknown action; limit/offset not a JSON string, not digits or
//	              out of range (limit 1..1000, offset >= 0); a field of the wrong JSON type;
//	              tag key empty, longer than kms.MaxTagKeyLength, or containing ASCII 0-31 or
//	              kms.ForbiddenTagChars; the same for values (kms.MaxTagValueLength; "" is
//	              allowed); duplicate keys; duplicate values within a key; more than kms.MaxTags
//	              keys; match key other than resource_name; match value empty or longer than
//	              kms.MaxMatchValueLength; sequence present but not 36 bytes
//	403 KMS.0301  no credentials at all, an empty X-Auth-Token, or an AK registered with a
//	              security token called without X-Security-Token
//	403 KMS.0302  unknown token; any AK/SK failure: malformed Authorization, unknown AK, bad
//	              signature, X-Sdk-Date missing, unparsable or more than MaxClockSkew away,
//	              wrong or unexpected X-Security-Token
//	403 KMS.0303  token marked expired (ExpireToken)
//	403 KMS.0305  the path's project_id is not the emulator's project
//
// KMS.0206 is documented as "invalid sequence"; lacking a documented generic code for an
// invalid value, the emulator uses it for every invalid field value. Authentication is checked
// before the project, the project before the body. Gateway-style answers (429, 5xx with an HTML
// body, dropped connections) only come from injected faults.
//
// # Response shapes
//
// ShapeSchema (default) follows the schema: every scalar in resource_detail is a string,
// dates are epoch seconds as strings, resource_detail is an object. ShapeExample follows the
// vendor's response example: key_state, default_key_flag and key_type are numbers,
// key_rotation_enabled is a boolean, dates are epoch milliseconds as numbers, resource_detail
// is an array of one object. In both shapes an absent date is "", tags is [{key,value}]
// sorted by key (an empty array when none), resource_name is the alias and total_count is a
// number.
//
// # Authentication
//
// X-Auth-Token is checked against tokens registered with AddToken (ExpireToken marks one
// expired). Otherwise an Authorization: SDK-HMAC-SHA256 header is verified by rebuilding the
// request from the method, path, query, signed headers and body and signing it again with the
// official signer (github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer) using the
// registered SK. Secrets are never logged. WithAuthDisabled accepts every request.
//
// # Faults
//
// InjectFault queues a Fault; it applies to matching requests (by action, after Skip matching
// requests, for Times requests or until ClearFaults). Gateway faults (throttle, server_error,
// drop, kms_error, latency) are applied before authentication; response faults
// (malformed_json, truncated_json, total_drift, duplicate, empty_page) to successful answers
// only. One fault applies per request: the first matching one in the queue.
package kmstest
