// Package kms is a client for the Huawei Cloud KMS ListKmsByTags API
// (POST /v1.0/{project_id}/kms/resource_instances/action), and the one home of its rules.
//
// docs/kms-api.md in this repository is the contract in full: the request, paging, limits,
// response shapes, error codes and authentication, with the decisions taken where the vendor's
// API page is ambiguous. In short (the emulator in pkg/kmstest implements the same decisions):
//
//   - Filter semantics: different tag keys are ANDed, the values of one key are ORed, and an empty
//     values list means "has the key, any value". A resource_name match is a case-sensitive
//     substring of the key alias. (The vendor's page says values are ANDed, which could never
//     match anything, since a key carries one value per tag key.)
//   - Limits (rules.go): at most 10 tag keys; a key 1-36 Unicode characters, a value at most 43;
//     neither with ASCII 0-31 or any of * < > \ =; no repeated keys, no repeated values within a
//     key; a match value 1-255 characters; limit "1".."1000" and offset sent as strings.
//   - Tolerant decoding: scalar fields may come as string, number or boolean; resource_detail as
//     an object or a one-element array; dates as epoch seconds or milliseconds; total_count as a
//     number or a numeric string; unknown fields are ignored. The vendor's own example response
//     (testdata/seed_response.json) decodes.
//   - Paging: ListKeys lists until offset >= total_count, de-duplicates by key id, sorts by id, and
//     restarts a listing whose total_count moved or whose pages came back inconsistent. It never
//     returns a partial result as a success. With the default page size of 1000, N keys cost
//     ceil(N/1000) calls.
//   - Authentication: AK/SK signing (SDK-HMAC-SHA256) through the official SDK's signer, with
//     X-Security-Token for temporary credentials, or an IAM token in X-Auth-Token. Credentials
//     never appear in errors or logs; the three headers are redacted in debug output.
//   - Errors: *APIError carries the HTTP status and the KMS error code and message; 429, 5xx,
//     timeouts and resets are retried with bounded, jittered exponential backoff, honouring
//     Retry-After; 400, 403 and other 4xx answers are not.
package kms
