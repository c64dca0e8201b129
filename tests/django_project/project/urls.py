from django.urls import path

from chat import views

urlpatterns = [
    path("push/<str:topic>/", views.push, name="push"),
]
