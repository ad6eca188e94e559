package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// setOutcome records the outcome of an attempt in an object's conditions: Ready, and the
// kstatus conditions that follow from it. The attempt is over, so Reconciling goes; Stalled
// stays only for a failure that retrying cannot mend.
func setOutcome(conditions *[]metav1.Condition, generation int64, status metav1.ConditionStatus, reason, message string) {
	message = bounded(message, maxConditionMessage)
	meta.SetStatusCondition(conditions, metav1.Condition{
		Type: kmsv1alpha1.ConditionReady, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
	})
	meta.RemoveStatusCondition(conditions, kmsv1alpha1.ConditionReconciling)
	if status == metav1.ConditionFalse && kmsv1alpha1.Stalls(reason) {
		meta.SetStatusCondition(conditions, metav1.Condition{
			Type: kmsv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: reason, Message: message, ObservedGeneration: generation,
		})
		return
	}
	meta.RemoveStatusCondition(conditions, kmsv1alpha1.ConditionStalled)
}

// setReconciling records that an attempt the user asked for has begun; it tells whether that
// changed the conditions.
func setReconciling(conditions *[]metav1.Condition, generation int64, message string) bool {
	return meta.SetStatusCondition(conditions, metav1.Condition{
		Type: kmsv1alpha1.ConditionReconciling, Status: metav1.ConditionTrue, Reason: kmsv1alpha1.ReasonProgressing,
		Message: message, ObservedGeneration: generation,
	})
}
