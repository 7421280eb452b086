output "queue_names" {
  description = "Short name of each queue (the queue ID), by key of var.queues."
  value       = { for key, queue in google_cloud_tasks_queue.this : key => queue.name }
}

output "queue_ids" {
  description = "Full resource name of each queue, projects/PROJECT/locations/LOCATION/queues/QUEUE, by key of var.queues."
  value       = { for key, queue in google_cloud_tasks_queue.this : key => queue.id }
}

output "invoker_service_account_email" {
  description = "Email of the service account Cloud Tasks signs OIDC tokens as; null when there is no invoker."
  value       = local.invoker_email
}

output "environment" {
  description = "Environment variables the cloudtasks_deferred library reads, for the service's env (Cloud Run) or env_variables (app.yaml). Keys are known at plan time: the invoker variables appear when there is an invoker, BASE_URL and AUDIENCE when cloud_run_url is set."
  value = merge(
    {
      GOOGLE_CLOUD_PROJECT         = var.project_id
      CLOUDTASKS_DEFERRED_LOCATION = var.location
      CLOUDTASKS_DEFERRED_QUEUE    = var.default_queue
    },
    local.has_invoker ? {
      CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT  = local.invoker_email
      CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS = local.invoker_email
    } : {},
    var.cloud_run_url == null ? {} : {
      CLOUDTASKS_DEFERRED_BASE_URL = var.cloud_run_url
      # Cloud Tasks' default OIDC audience: the URL's origin (scheme and host, no path).
      CLOUDTASKS_DEFERRED_AUDIENCE = regex("^https://[^/?#]+", var.cloud_run_url)
    },
  )

  # A service that reads these starts only once its APIs are on and it may enqueue.
  depends_on = [
    google_project_service.this,
    google_cloud_tasks_queue_iam_member.runtime_enqueuer,
    google_service_account_iam_member.runtime_acts_as_invoker,
  ]
}
