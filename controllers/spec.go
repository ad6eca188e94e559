package controllers

import (
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// filterFromSpec is the KMS question a spec asks.
func filterFromSpec(spec kmsv1alpha1.KmsKeySelectorSpec) kms.Filter {
	var f kms.Filter
	for _, t := range spec.Tags {
		f.Tags = append(f.Tags, kms.TagFilter{Key: t.Key, Values: t.Values})
	}
	for _, m := range spec.Matches {
		f.Matches = append(f.Matches, kms.Match{Key: kms.MatchKey(m.Key), Value: m.Value})
	}
	return f
}

func targetName(sel *kmsv1alpha1.KmsKeySelector) string {
	if sel.Spec.Target.ConfigMapName != "" {
		return sel.Spec.Target.ConfigMapName
	}
	return sel.Name
}

func deletionPolicy(spec kmsv1alpha1.KmsKeySelectorSpec) kmsv1alpha1.DeletionPolicy {
	if spec.Target.DeletionPolicy == "" {
		return kmsv1alpha1.DeletionPolicyDelete
	}
	return spec.Target.DeletionPolicy
}

func refreshInterval(sel *kmsv1alpha1.KmsKeySelector) time.Duration {
	if sel.Spec.RefreshInterval == nil {
		return DefaultRefreshInterval
	}
	return max(sel.Spec.RefreshInterval.Duration, kmsv1alpha1.MinRefreshInterval)
}

func pageSize(spec kmsv1alpha1.KmsKeySelectorSpec) int {
	if spec.PageSize == nil {
		return kms.MaxPageSize
	}
	return int(*spec.PageSize)
}
