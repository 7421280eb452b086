output "service_url" {
  description = "URL of the Cloud Run service; only callers with roles/run.invoker on it get in."
  value       = google_cloud_run_v2_service.app.uri
}

output "environment" {
  description = "The variables set on the service, for running the app elsewhere against the same queues."
  value       = module.cloudtasks_deferred.environment
}
