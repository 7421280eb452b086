output "queue_ids" {
  description = "Full resource names of the queues."
  value       = module.cloudtasks_deferred.queue_ids
}

output "env_variables" {
  description = "Copy into app.yaml's env_variables: (App Engine sets GOOGLE_CLOUD_PROJECT itself)."
  value       = module.cloudtasks_deferred.environment
}
